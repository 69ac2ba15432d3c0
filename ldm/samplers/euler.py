"""Euler and Euler ancestral samplers on the probability-flow ODE of Karras et al. 2022 (EDM).

In the variance-exploding form x = x0 + sigma * noise, the probability-flow ODE (Eq. 1 with
sigma(t) = t and the score of Eq. 3, grad log p = (D - x) / sigma^2) is

    dx/dsigma = (x - D(x, sigma)) / sigma,

and Euler's method steps it with d = (x - D) / sigma held fixed over [sigma_next, sigma]. Karras
et al.'s Alg. 2 adds "churn": before a step, noise raises sigma to sigma_hat = sigma (1 + gamma).

The ancestral variant takes the Euler step down to sigma_down and adds fresh noise of std sigma_up,
with sigma_down^2 + sigma_up^2 = sigma_next^2 so that the marginal noise level is right. With eta = 1
it samples the exact posterior q(x_next | x, x0 = D) of the forward process (Ho et al. 2020, Eq. 7
in sigma form: mean x0 + (sigma_next/sigma)^2 (x - x0), variance sigma_next^2 (sigma^2 - sigma_next^2)
/ sigma^2), i.e. DDPM's ancestral sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import torch

from ldm.samplers.noise import Generators, randn_like


def ancestral_step(
    sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) of an ancestral step from sigma to sigma_next; eta scales the noise."""
    if eta == 0 or sigma_next == 0:
        return sigma_next, sigma_next * 0
    # Posterior std of the forward process, sigma_next * sqrt(sigma^2 - sigma_next^2) / sigma, times eta.
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
    sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
    return sigma_down, sigma_up


def churn(
    x: torch.Tensor,
    sigma: torch.Tensor,
    gamma: float,
    s_noise: float,
    generator: Generators,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Karras et al. 2022, Alg. 2 lines 5-6: raise the noise level to sigma_hat = sigma (1 + gamma)."""
    sigma_hat = sigma * (1 + gamma)
    if gamma > 0:
        x = x + randn_like(x, generator) * s_noise * (sigma_hat**2 - sigma**2).sqrt()
    return x, sigma_hat


def churn_gamma(sigma: torch.Tensor, steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Alg. 2 line 4: gamma = min(S_churn / N, sqrt(2) - 1) for sigma in [S_tmin, S_tmax], else 0."""
    if s_churn <= 0 or not s_tmin <= float(sigma) <= s_tmax:
        return 0.0
    return min(s_churn / steps, math.sqrt(2) - 1)


@torch.no_grad()
def sample_euler(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: Optional[dict[str, Any]] = None,
    callback: Optional[Callable[[dict[str, Any]], None]] = None,
    generator: Generators = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (first order); s_churn > 0 adds Alg. 2's churn."""
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = churn_gamma(sigma, steps, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churn(x, sigma, gamma, s_noise, generator)
        denoised = model(x, sigma_hat * ones, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
        d = (x - denoised) / sigma_hat  # Eq. 1 and 3: dx/dsigma
        x = x + (sigma_next - sigma_hat) * d
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: Optional[dict[str, Any]] = None,
    callback: Optional[Callable[[dict[str, Any]], None]] = None,
    generator: Generators = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler steps to sigma_down plus fresh noise of std sigma_up (eta = 1: DDPM's posterior)."""
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + (sigma_down - sigma) * (x - denoised) / sigma
        if sigma_next > 0 and eta > 0:
            x = x + randn_like(x, generator) * s_noise * sigma_up
    return x
