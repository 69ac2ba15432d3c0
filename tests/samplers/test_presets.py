"""The sampler config group: one preset per registered sampler, each valid against SamplerConfig."""

import argparse

import pytest
import torch

from ldm.config import SamplerConfig
from ldm.samplers import SAMPLERS
from ldm.samplers.presets import add_sampler_args, sampler_from_args, sampler_preset, sampler_presets
from ldm.samplers.sigmas import get_sigmas

PRESETS = sampler_presets()


def test_every_sampler_has_a_preset_named_after_it():
    assert PRESETS == sorted(SAMPLERS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_valid(name):
    config = sampler_preset(SamplerConfig(), name, steps=7)
    assert config.name == name and config.steps == 7
    assert get_sigmas(
        torch.linspace(0.03, 14.6, 1000), config.steps, config.schedule, config.spacing
    ).shape == (8,)
    if name in ("euler_ancestral", "dpmpp_2m_sde"):
        assert config.eta == 1.0  # stochastic by default


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="unknown sampler 'dpm'; available: ddim, ddpm, dpmpp_2m"):
        sampler_preset(SamplerConfig(), "dpm")


def test_flags_override_only_what_they_name():
    p = argparse.ArgumentParser()
    add_sampler_args(p)
    base = SamplerConfig(name="ddim", steps=50, guidance_scale=5.0, guidance_rescale=0.0)
    assert sampler_from_args(base, p.parse_args([])) == base
    rescaled = sampler_from_args(base, p.parse_args(["--rescale", "0.7"]))
    assert rescaled == SamplerConfig(name="ddim", steps=50, guidance_scale=5.0, guidance_rescale=0.7)
    chosen = sampler_from_args(base, p.parse_args(["--rescale", "0.7", "--scale", "3", "--sampler", "euler"]))
    assert (chosen.name, chosen.guidance_scale, chosen.guidance_rescale) == ("euler", 3.0, 0.7)
    interval = sampler_from_args(base, p.parse_args(["--guidance-interval", "0.3", "5"]))
    assert interval == SamplerConfig(name="ddim", steps=50, guidance_scale=5.0, guidance_interval=[0.3, 5.0])
