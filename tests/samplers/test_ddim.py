"""DDIM on Gaussian data, where the exact denoiser and the exact probability-flow ODE are known.

For x0 ~ N(mu, s^2), D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), and the ODE
dx/dsigma = (x - D) / sigma has the solution x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2).
"""

import math

import pytest
import torch

from ldm.samplers import get_sampler, sample_ddim

MU, S = 0.5, 0.8


def gaussian_denoiser(x, sigma, **_):
    s2 = sigma[:, None] ** 2
    return (S**2 * x + s2 * MU) / (S**2 + s2)


def geometric_sigmas(n, sigma_max=20.0, sigma_min=0.02):
    return torch.cat(
        [
            torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n, dtype=torch.float64),
            torch.zeros(1, dtype=torch.float64),
        ]
    )


def ode_error(steps):
    sigmas = geometric_sigmas(steps)
    x_T = torch.linspace(-40, 40, 101, dtype=torch.float64)[:, None]
    out = sample_ddim(gaussian_denoiser, x_T.clone(), sigmas)
    sig_min = sigmas[-2]
    # Exact flow to sigma_min, then the last step returns D at sigma_min.
    x_min = MU + (x_T - MU) * math.sqrt(S**2 + sig_min**2) / math.sqrt(S**2 + sigmas[0] ** 2)
    exact = gaussian_denoiser(x_min, sig_min * torch.ones(101, dtype=torch.float64))
    return (out - exact).abs().max().item()


def test_deterministic_ddim_converges_at_first_order():
    errors = [ode_error(n) for n in (25, 50, 100, 200)]
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:]))
    orders = [math.log2(e1 / e2) for e1, e2 in zip(errors, errors[1:])]
    # Euler/DDIM is first order: halving the step halves the error.
    assert all(0.85 < p < 1.15 for p in orders), orders
    assert errors[-1] < 2e-2


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_samples_match_the_target_distribution(eta):
    g = torch.Generator().manual_seed(0)
    n = 20000
    sigmas = geometric_sigmas(100)
    x_T = MU + torch.randn(n, 1, generator=g, dtype=torch.float64) * math.sqrt(S**2 + sigmas[0].item() ** 2)
    out = sample_ddim(gaussian_denoiser, x_T, sigmas, eta=eta, generator=g)
    assert out.mean().item() == pytest.approx(MU, abs=0.03)
    assert out.std().item() == pytest.approx(S, rel=0.03)


def test_callback_sees_every_step_and_eta_zero_is_deterministic():
    seen = []
    sigmas = geometric_sigmas(7)
    x = torch.randn(3, 2, dtype=torch.float64)
    a = sample_ddim(gaussian_denoiser, x.clone(), sigmas, callback=lambda d: seen.append(d["i"]))
    b = sample_ddim(gaussian_denoiser, x.clone(), sigmas)
    assert seen == list(range(7))
    assert torch.equal(a, b)


def test_registry():
    assert get_sampler("ddim") is sample_ddim
    with pytest.raises(ValueError, match="unknown sampler 'ddmi'"):
        get_sampler("ddmi")
