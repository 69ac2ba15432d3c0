"""Sampler presets: ``ldm/conf/sampler/NAME.yaml`` read onto ``SamplerConfig`` (no Hydra needed)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from ldm.config import CONF_DIR, SamplerConfig

PRESET_DIR = CONF_DIR / "sampler"


def sampler_presets() -> list[str]:
    """The names of the shipped sampler presets, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def sampler_preset(
    base: SamplerConfig,
    name: Optional[str] = None,
    *,
    steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
) -> SamplerConfig:
    """`base`, or the preset ``ldm/conf/sampler/<name>.yaml``, with steps and guidance overridden when given."""
    from omegaconf import OmegaConf

    config = base
    if name is not None:
        path = PRESET_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown sampler '{name}'; available: {', '.join(sampler_presets())}")
        merged = OmegaConf.merge(OmegaConf.structured(SamplerConfig), OmegaConf.load(path))
        config = OmegaConf.to_object(merged)
    overrides = {"steps": steps, "guidance_scale": guidance_scale}
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
