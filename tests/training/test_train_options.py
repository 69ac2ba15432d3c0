"""Fast checks of ldm/train.py's options and the experiment presets (no training)."""

import dataclasses

import pytest
import torch

from ldm.denoiser.unet import UNetModel
from ldm.training.config_store import compose_config
from ldm.weights.sd import get_sd_architecture


def test_the_default_run_keeps_its_objective():
    config = compose_config([])
    d = config.diffusion
    assert (d.parameterization, d.beta_schedule, d.loss_weighting, d.offset_noise, d.ema) == (
        "eps",
        "scaled_linear",
        "uniform",
        0.0,
        False,
    )
    assert not d.zero_terminal_snr and d.init_from is None and not config.conditioner.trainable
    assert config.trainer.precision == "auto"


def test_sd2_base_preset_is_stable_diffusion_2():
    config = compose_config(["experiment=sd2_base"])
    assert dataclasses.replace(config.denoiser, use_checkpoint=False) == get_sd_architecture("sd2").denoiser
    assert config.denoiser.use_checkpoint
    with torch.device("meta"):
        unet = UNetModel.from_config(config.denoiser)
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    c = config.conditioner
    assert (c.arch, c.pretrained, c.layer, c.trainable) == (
        "ViT-H-14",
        "laion2b_s32b_b79k",
        "penultimate",
        False,
    )
    a = config.autoencoder
    assert (a.embed_dim, a.ch, a.ch_mult, a.num_res_blocks) == (4, 128, [1, 2, 4, 4], 2)  # kl-f8
    assert config.data.resolution == 512 and config.trainer.precision == "bf16-mixed"
    assert config.diffusion.ema and config.diffusion.scale_factor == pytest.approx(0.18215)
