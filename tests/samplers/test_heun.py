"""Heun's churn (Karras et al. 2022, Alg. 2) and its gamma rule."""

import math

import pytest
import torch

from ldm.samplers.euler import churn_gamma
from ldm.samplers.heun import sample_heun
from tests.samplers.gaussian import MU, S, gaussian_denoiser, geometric_sigmas


def test_churn_gamma_follows_alg2_line4():
    assert churn_gamma(torch.tensor(5.0), 10, 2.0, 0.0, float("inf")) == pytest.approx(0.2)
    assert churn_gamma(torch.tensor(5.0), 10, 80.0, 0.0, float("inf")) == pytest.approx(math.sqrt(2) - 1)
    assert churn_gamma(torch.tensor(5.0), 10, 2.0, 0.0, 1.0) == 0.0  # outside [S_tmin, S_tmax]


def test_heun_with_churn_keeps_the_target_distribution():
    g = torch.Generator().manual_seed(0)
    sigmas = geometric_sigmas(50)
    x = MU + torch.randn(100_000, 1, generator=g, dtype=torch.float64) * math.sqrt(S**2 + 400.0)
    out = sample_heun(gaussian_denoiser, x, sigmas, generator=g, s_churn=20.0)
    plain = sample_heun(gaussian_denoiser, x, sigmas)
    assert out.mean().item() == pytest.approx(MU, abs=0.012)
    assert out.var().item() / S**2 == pytest.approx(1.0, abs=0.04)
    assert not torch.allclose(out, plain)  # the churn did add noise
