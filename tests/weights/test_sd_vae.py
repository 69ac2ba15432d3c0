"""The SD VAE part of ldm/weights/sd.py: SD VAE files in and out, and agreement with diffusers."""

import os

import pytest
import torch
from safetensors.torch import save_file

from ldm.autoencoder.model import KLAutoencoder
from ldm.config import AutoencoderConfig
from ldm.weights.sd import load_sd_vae, save_sd_vae, sd_vae_state_dict

TINY = AutoencoderConfig(resolution=32, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, norm_groups=8)


def random_model(seed: int = 0) -> KLAutoencoder:
    torch.manual_seed(seed)
    model = KLAutoencoder.from_config(TINY).eval()
    with torch.no_grad():  # GroupNorm affine parameters off their 1 / 0 init, so they are tested too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_save_load_round_trip_is_exact(tmp_path, suffix):
    model = random_model()
    path = save_sd_vae(model, tmp_path / f"vae{suffix}")
    loaded = load_sd_vae(path, TINY)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x, sample_posterior=False)[0], model(x, sample_posterior=False)[0])


def test_full_sd_checkpoint_and_ldm_training_entries(tmp_path):
    model = random_model(1)
    full = {f"first_stage_model.{k}": v for k, v in model.state_dict().items()}
    full["first_stage_model.loss.logvar"] = torch.zeros(())  # LDM's training entries are dropped
    full["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2, 2)
    full["scale_factor"] = torch.tensor(0.18215)
    torch.save({"state_dict": full, "global_step": 7}, tmp_path / "sd.ckpt")
    loaded = load_sd_vae(tmp_path / "sd.ckpt", TINY)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    standalone = {
        **model.state_dict(),
        "loss.discriminator.main.0.weight": torch.zeros(1),
        "model_ema.decay": torch.ones(()),
    }
    assert sd_vae_state_dict(standalone).keys() == model.state_dict().keys()


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    state = dict(random_model().state_dict())
    del state["decoder.conv_out.bias"]
    state["decoder.extra.weight"] = torch.zeros(1)
    state["quant_conv.weight"] = torch.zeros(2, 2, 1, 1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError) as error:
        load_sd_vae(tmp_path / "bad.safetensors", TINY)
    message = str(error.value)
    assert "\n" not in message
    assert "1 missing keys, e.g. decoder.conv_out.bias" in message
    assert "1 unexpected keys, e.g. decoder.extra.weight" in message
    assert "quant_conv.weight: (2, 2, 1, 1) given, (8, 8, 1, 1) expected" in message
    save_file({"other.weight": torch.zeros(1)}, str(tmp_path / "none.safetensors"))
    with pytest.raises(ValueError, match="no SD VAE weights"):
        load_sd_vae(tmp_path / "none.safetensors", TINY)
    with pytest.raises(FileNotFoundError):
        load_sd_vae(tmp_path / "absent.ckpt", TINY)


def test_matches_diffusers_autoencoder_kl():
    """diffusers' AutoencoderKL, loaded through its own LDM single-file VAE conversion, gives the same numbers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # diffusers must not look for the network here
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    model = random_model(2).double()
    reference = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[32, 64, 64],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    converted = convert_ldm_vae_checkpoint(model.state_dict(), reference.config)
    reference.load_state_dict(converted, strict=True)
    reference = reference.double().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        posterior, expected = model.encode(x), reference.encode(x).latent_dist
        assert relative_error(posterior.mean, expected.mean) <= 1e-5
        assert relative_error(posterior.logvar, expected.logvar) <= 1e-5
        z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        assert relative_error(model.decode(z), reference.decode(z).sample) <= 1e-5
    # float32 as used: the same to float32 rounding.
    model, reference = model.float(), reference.float()
    with torch.no_grad():
        assert (
            relative_error(model.encode(x.float()).mean, reference.encode(x.float()).latent_dist.mean) <= 1e-5
        )
        assert relative_error(model.decode(z.float()), reference.decode(z.float()).sample) <= 1e-5
