"""ldm/benchmark/networks.py: seeded random networks (or a checkpoint's), latent sizes, switches."""

from __future__ import annotations

import pytest
import torch

from ldm.benchmark.networks import build_networks, randomize_, set_attention_backend, without_checkpointing
from ldm.denoiser.attention import BasicTransformerBlock, CrossAttention
from ldm.weights.checkpoint import read_checkpoint
from tests.benchmark.conftest import debug_bench
from tests.conftest import save_tiny_latent_diffusion, tiny_module_configs


def test_weights_are_random_and_seeded(debug):
    config, settings, networks = debug
    again = build_networks(config, 32, seed=config.seed)
    other = build_networks(config, 32, seed=config.seed + 1)
    ours = networks.unet.state_dict()
    assert all(torch.equal(v, again.unet.state_dict()[k]) for k, v in ours.items())
    assert not torch.equal(ours["out.2.weight"], other.unet.state_dict()["out.2.weight"])
    # The output layer, zero-initialised by the U-Net itself, is random too: outputs are not all zero.
    x, t, context = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 16, 32)
    with torch.no_grad():
        assert networks.unet(x, t, context).abs().mean() > 0.1
    assert networks.context_length == 16 and networks.context_dim == 32 and networks.latent_channels == 4


def test_randomize_scales_by_fan_in():
    linear = torch.nn.Linear(400, 300)
    norm = torch.nn.GroupNorm(4, 3000)
    randomize_(linear, torch.Generator().manual_seed(0))
    randomize_(norm, torch.Generator().manual_seed(0))
    assert linear.weight.std().item() == pytest.approx(400**-0.5, rel=0.02)  # N(0, 1 / fan_in)
    assert norm.weight.mean().item() == pytest.approx(
        1, abs=0.02
    ) and norm.weight.std().item() == pytest.approx(0.2, rel=0.05)
    assert linear.bias.std().item() == pytest.approx(0.2, rel=0.2)


def test_latent_side_is_checked(debug):
    _, _, networks = debug  # f = 2 (debug autoencoder), the U-Net has one level (no downsampling)
    assert networks.latent_side(32) == 16 and networks.latent_side(6) == 3
    with pytest.raises(ValueError, match="bench.resolution=33 is not divisible by the autoencoder factor 2"):
        networks.latent_side(33)
    _, _, shapes = debug_bench("experiment=shapes")  # f = 4, and the U-Net halves the latents once
    assert shapes.latent_side(40) == 10
    with pytest.raises(ValueError, match="9x9 latents, which the U-Net's 2x downsampling .* multiple of 8"):
        shapes.latent_side(36)


def test_a_checkpoint_brings_its_networks_and_weights(tmp_path):
    path = save_tiny_latent_diffusion(tmp_path / "last.ckpt", seed=3)
    config, _, _ = debug_bench()
    networks = build_networks(config, 32, ckpt=str(path))
    state = read_checkpoint(path)["state_dict"]
    for key, value in networks.unet.state_dict().items():
        assert torch.equal(value, state[f"model.diffusion_model.{key}"])
    for key, value in networks.autoencoder.state_dict().items():
        assert torch.equal(value, state[f"first_stage_model.{key}"])
    assert networks.hparams["image_size"] == 32
    assert networks.hparams["denoiser"] == read_checkpoint(path)["hyper_parameters"]["denoiser"]
    assert networks.context_length == tiny_module_configs()["conditioner"].context_length


def test_attention_backend_and_checkpointing_switches(debug):
    _, _, networks = debug
    layers = [m for m in networks.unet.modules() if isinstance(m, CrossAttention)]
    assert len(layers) == 2 * len(
        [m for m in networks.unet.modules() if isinstance(m, BasicTransformerBlock)]
    )
    set_attention_backend(networks.unet, "math")
    assert {m.backend for m in layers} == {"math"}
    for m in networks.unet.modules():
        if hasattr(m, "use_checkpoint"):
            m.use_checkpoint = True
    checkpointed = [m for m in networks.unet.modules() if getattr(m, "use_checkpoint", False)]
    with without_checkpointing(networks.unet):
        assert not any(m.use_checkpoint for m in checkpointed)
    assert checkpointed and all(m.use_checkpoint for m in checkpointed)
