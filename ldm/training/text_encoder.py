"""The text encoder a training run builds: the conditioner config, with the weights of
``diffusion.init_from`` in place of ``conditioner.pretrained`` when that file holds a text encoder.

``ldm.training.train`` applies the rule to the run's config (the module then loads the file's
weights with the rest); ``python -m ldm.data.cache_latents --text`` builds the same encoder alone.
Neither Lightning nor Hydra is imported here.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ldm.conditioning.text import OpenCLIPTextEncoder, without_pretrained
from ldm.config import TrainConfig
from ldm.weights.io import read_tensor_names, read_tensors
from ldm.weights.sd import PREFIXES, load_part, split_sd_state_dict

log = logging.getLogger(__name__)


def init_from_parts(path: str | Path) -> set[str]:
    """Which networks (denoiser, autoencoder, conditioner) initial weights hold, read from the keys alone."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"diffusion.init_from not found: {path}")
    keys = read_tensor_names(path)
    return {name for name, prefix in PREFIXES.items() if any(k.startswith(prefix) for k in keys)}


def with_training_text_encoder(config: TrainConfig, init_parts: set[str]) -> TrainConfig:
    """`config` with the conditioner a run builds: without pretrained weights when diffusion.init_from
    holds a text encoder (`init_parts`: what that file holds), whose weights then replace them."""
    if "conditioner" in init_parts and config.conditioner.pretrained is not None:
        log.info("text encoder weights from %s, not conditioner.pretrained", config.diffusion.init_from)
        return replace(config, conditioner=without_pretrained(config.conditioner))
    return config


def training_text_encoder(config: TrainConfig) -> OpenCLIPTextEncoder:
    """The text encoder, in eval mode, that ``python -m ldm.train`` trains a new stage 2 of `config` with."""
    init_from = config.diffusion.init_from
    init_parts = init_from_parts(init_from) if init_from else set()
    encoder = OpenCLIPTextEncoder(with_training_text_encoder(config, init_parts).conditioner)
    if "conditioner" in init_parts:
        load_part(encoder.model, "conditioner", split_sd_state_dict(read_tensors(init_from))["conditioner"])
    return encoder.eval()
