"""Gaussian data x0 ~ N(MU, S^2), where the exact denoiser and the exact probability-flow ODE are known.

D(x, sigma) = (S^2 x + sigma^2 MU) / (S^2 + sigma^2), and the ODE dx/dsigma = (x - D) / sigma has the
solution x(sigma) = MU + (x_T - MU) sqrt(S^2 + sigma^2) / sqrt(S^2 + sigma_T^2).
"""

from __future__ import annotations

import math

import torch

MU, S = 0.5, 0.8


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor, **_) -> torch.Tensor:
    """The exact D(x, sigma) for x0 ~ N(MU, S^2), elementwise; sigma has shape [B]."""
    s2 = sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2
    return (S**2 * x + s2 * MU) / (S**2 + s2)


def geometric_sigmas(n: int, sigma_max: float = 20.0, sigma_min: float = 0.02) -> torch.Tensor:
    """n sigmas uniform in log sigma, then 0 (float64)."""
    return torch.cat(
        [
            torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n, dtype=torch.float64),
            torch.zeros(1, dtype=torch.float64),
        ]
    )


def ode_error(sample_fn, steps: int, **options) -> float:
    """Max error of a deterministic sampler against the exact flow on a grid of starting points.

    Every sampler's last step (sigma_min -> 0) returns D, so the reference is the exact flow to
    sigma_min followed by D there.
    """
    sigmas = geometric_sigmas(steps)
    x_T = torch.linspace(-40, 40, 101, dtype=torch.float64)[:, None]
    out = sample_fn(gaussian_denoiser, x_T.clone(), sigmas, **options)
    sig_min = sigmas[-2].item()
    x_min = MU + (x_T - MU) * math.sqrt(S**2 + sig_min**2) / math.sqrt(S**2 + sigmas[0].item() ** 2)
    exact = gaussian_denoiser(x_min, sig_min * torch.ones(101, dtype=torch.float64))
    return (out - exact).abs().max().item()


def orders(errors: list[float]) -> list[float]:
    """Observed orders log2(e_n / e_2n) for errors at step counts that double."""
    return [math.log2(e1 / e2) for e1, e2 in zip(errors, errors[1:])]
