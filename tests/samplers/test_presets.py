"""The sampler config group: one preset per registered sampler, each valid against SamplerConfig."""

import pytest
import torch

from ldm.config import SamplerConfig
from ldm.samplers import SAMPLERS
from ldm.samplers.presets import sampler_preset, sampler_presets
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
