"""ldm/training/text_encoder.py: the text encoder of a run, with the weights of diffusion.init_from."""

from dataclasses import replace

import pytest
import torch

from ldm.conditioning.text import OpenCLIPTextEncoder
from ldm.diffusion.latent_diffusion import LatentDiffusion
from ldm.training.config_store import compose_config
from ldm.training.text_encoder import init_from_parts, training_text_encoder, with_training_text_encoder
from ldm.weights.io import read_tensors, write_tensors
from ldm.weights.sd import load_initial_weights


def latent_diffusion(config) -> LatentDiffusion:
    """The stage-2 networks of a training config, with random weights."""
    parts = ("autoencoder", "denoiser", "conditioner", "diffusion", "sampler")
    return LatentDiffusion(
        **{name: getattr(config, name) for name in parts}, image_size=config.data.resolution
    )


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_text_encoder_of_init_from_is_the_one_training_loads(tmp_path):
    base = compose_config(["experiment=debug"])
    source = latent_diffusion(replace(base, conditioner=replace(base.conditioner, init_seed=7)))
    path = write_tensors(source.state_dict(), tmp_path / "init.safetensors")
    assert init_from_parts(path) == {"denoiser", "autoencoder", "conditioner"}
    config = compose_config(["experiment=debug", f"diffusion.init_from={path}"])
    encoder = training_text_encoder(config)
    assert not encoder.training
    assert_same(encoder.state_dict(), source.cond_stage_model.state_dict())
    # What stage 2 of `python -m ldm.train` builds and loads from the same file.
    module = latent_diffusion(with_training_text_encoder(config, init_from_parts(path)))
    assert "conditioner" in load_initial_weights(module, read_tensors(path))
    assert_same(module.cond_stage_model.state_dict(), encoder.state_dict())
    # Without init_from: the config's own (seeded) text encoder, which differs.
    plain = training_text_encoder(base).state_dict()
    assert_same(plain, OpenCLIPTextEncoder(base.conditioner).state_dict())
    assert not all(torch.equal(plain[k], encoder.state_dict()[k]) for k in plain)


def test_init_from_without_a_text_encoder_keeps_the_configs(tmp_path):
    base = compose_config(["experiment=debug"])
    state = {k: v for k, v in latent_diffusion(base).state_dict().items() if k.startswith("model.")}
    path = write_tensors(state, tmp_path / "unet.safetensors")
    assert init_from_parts(path) == {"denoiser"}
    config = compose_config(["experiment=debug", f"diffusion.init_from={path}"])
    assert with_training_text_encoder(config, {"denoiser"}) is config
    expected = OpenCLIPTextEncoder(base.conditioner).state_dict()
    assert_same(training_text_encoder(config).state_dict(), expected)
    with pytest.raises(FileNotFoundError, match="diffusion.init_from not found"):
        init_from_parts(tmp_path / "none.safetensors")


def test_init_from_text_encoder_replaces_a_pretrained_tag():
    config = compose_config(["experiment=debug"])
    config = replace(config, conditioner=replace(config.conditioner, arch="ViT-B-32", pretrained="openai"))
    assert with_training_text_encoder(config, {"denoiser", "autoencoder"}) is config
    changed = with_training_text_encoder(config, {"denoiser", "conditioner"})
    # open_clip's "openai" weights use QuickGELU: the tag-free network is the -quickgelu variant.
    assert (changed.conditioner.arch, changed.conditioner.pretrained) == ("ViT-B-32-quickgelu", None)
    assert replace(changed, conditioner=config.conditioner) == config  # nothing else changes
