"""Heun's second-order sampler (Karras et al. 2022, "Elucidating the Design Space...", Alg. 1 and 2).

Each step takes an Euler step of the probability-flow ODE dx/dsigma = (x - D) / sigma to sigma_next,
evaluates the slope there, and redoes the step with the mean of the two slopes (the trapezoidal
rule). The step to sigma = 0 is Euler's (Alg. 1 line 6), since the slope is undefined at 0. With
s_churn > 0, Alg. 2's churn first raises the noise level. Two evaluations per step but the last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from ldm.samplers.euler import churn, churn_gamma
from ldm.samplers.noise import Generators


@torch.no_grad()
def sample_heun(
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
    """Heun's method on the probability-flow ODE (second order); s_churn > 0 is Alg. 2's stochastic sampler."""
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = churn_gamma(sigma, steps, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churn(x, sigma, gamma, s_noise, generator)  # Alg. 2 lines 4-6
        denoised = model(x, sigma_hat * ones, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
        d = (x - denoised) / sigma_hat  # Alg. 1 line 4
        x_euler = x + (sigma_next - sigma_hat) * d  # line 5
        if sigma_next == 0:
            x = x_euler
            continue
        d_next = (x_euler - model(x_euler, sigma_next * ones, **extra_args)) / sigma_next  # line 7
        x = x + (sigma_next - sigma_hat) * (d + d_next) / 2  # line 8
    return x
