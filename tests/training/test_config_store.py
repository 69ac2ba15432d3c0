"""The config surface: every YAML composes against the typed schema; typos are rejected."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from ldm.config import CONF_DIR, SamplerConfig, TrainConfig
from ldm.samplers.presets import sampler_preset
from ldm.training.config_store import register_configs

register_configs()
GROUPS = ["autoencoder", "denoiser", "conditioner", "sampler", "data", "trainer", "logger", "experiment"]


def compose_train(overrides=()):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize(
    "group,option",
    [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))],
)
def test_every_option_composes_into_the_typed_config(group, option):
    config = OmegaConf.to_object(compose_train([f"{group}={option}"]))
    assert isinstance(config, TrainConfig)


def test_default_is_the_explicit_composition():
    assert compose_train() == compose_train(["autoencoder=kl", "denoiser=unet_xattn"])
    config = OmegaConf.to_object(compose_train())
    # the shapes experiment sizes the default for a CPU: 32x32, f=4 autoencoder, tiny U-Net
    assert config.data.name == "shapes" and config.data.resolution == 32
    assert config.autoencoder.ch_mult == [1, 2, 2] and config.denoiser.context_dim == config.conditioner.width


@pytest.mark.parametrize(
    "override,message",
    [
        ("autoencoder.chanels=3", "Could not override 'autoencoder.chanels'"),  # a key not in the schema
        ("denoiser=nope", "Could not find 'denoiser/nope'"),  # an option not in conf/
    ],
)
def test_typos_are_rejected(override, message):
    with pytest.raises(ConfigCompositionException, match=re.escape(message)):
        compose_train([override])


def test_values_are_checked_against_the_schema_types():
    message = re.escape("Error merging override data.batch_size=abc")
    with pytest.raises(ConfigCompositionException, match=message) as info:
        compose_train(["data.batch_size=abc"])
    # DataConfig.batch_size is an int: the typed schema, not the YAML, rejects the string.
    assert isinstance(info.value.__cause__, ValidationError)
    assert "'abc' of type 'str' could not be converted to Integer" in str(info.value.__cause__)


def test_sampler_preset(tmp_path: Path):
    base = SamplerConfig(name="ddim", steps=50, guidance_scale=5.0)
    assert sampler_preset(base) == base
    assert sampler_preset(base, steps=10, guidance_scale=2.0) == SamplerConfig(
        name="ddim", steps=10, guidance_scale=2.0
    )
    assert sampler_preset(base, "ddim").name == "ddim"
    with pytest.raises(ValueError, match="unknown sampler 'nope'; available: .*ddim"):
        sampler_preset(base, "nope")
