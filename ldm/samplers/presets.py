"""Sampler presets: ``ldm/conf/sampler/NAME.yaml`` read onto ``SamplerConfig`` (no Hydra needed)."""

from __future__ import annotations

import argparse
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
    guidance_rescale: Optional[float] = None,
    guidance_interval: Optional[list[float]] = None,
) -> SamplerConfig:
    """`base`, or the preset ``ldm/conf/sampler/<name>.yaml``, with steps, guidance scale, guidance
    rescale and guidance interval overridden when given."""
    from omegaconf import OmegaConf

    config = base
    if name is not None:
        path = PRESET_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown sampler '{name}'; available: {', '.join(sampler_presets())}")
        merged = OmegaConf.merge(OmegaConf.structured(SamplerConfig), OmegaConf.load(path))
        config = OmegaConf.to_object(merged)
    overrides = {
        "steps": steps,
        "guidance_scale": guidance_scale,
        "guidance_rescale": guidance_rescale,
        "guidance_interval": guidance_interval,
    }
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def add_sampler_args(
    p: argparse.ArgumentParser, *, steps_help: str = "sampling steps (default: the sampler's)"
) -> None:
    """The flags that choose the sampler over a checkpoint's own: --sampler, --steps, --scale, --rescale,
    --guidance-interval."""
    p.add_argument("--sampler", type=str, default=None, help="a preset of conf/sampler (default: the checkpoint's)")
    p.add_argument("--steps", type=int, default=None, help=steps_help)
    p.add_argument(
        "--scale", type=float, default=None, help="classifier-free guidance scale (default: the sampler's)"
    )
    p.add_argument(
        "--rescale",
        type=float,
        default=None,
        help="guidance rescale phi (Lin et al. 2024; 0.7 for zero-terminal-SNR models; default: the sampler's)",
    )
    p.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="guide only at noise levels LOW < sigma <= HIGH (Kynkaanniemi et al. 2024; default: the sampler's)",
    )


def sampler_from_args(base: SamplerConfig, args: argparse.Namespace) -> SamplerConfig:
    """`base` with the choices of ``add_sampler_args``' flags."""
    return sampler_preset(
        base,
        args.sampler,
        steps=args.steps,
        guidance_scale=args.scale,
        guidance_rescale=args.rescale,
        guidance_interval=args.guidance_interval,
    )
