"""DPM-Solver++(2M) and its SDE variant (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models").

Both integrate in lambda = log(alpha / sigma_vp), which in the variance-exploding form is
lambda = -log(sigma), with the data prediction D. Over a step of length h = lambda_next - lambda the
exact solution of the ODE (variation of constants, in sigma form) is

    x_next = (sigma_next / sigma) x + sigma_next * integral of e^lambda D d lambda,

and holding D fixed gives DPM-Solver++1 (= DDIM): x_next = (sigma_next / sigma) x - (e^-h - 1) D.
DPM-Solver++(2M) (Alg. 2) replaces D by the multistep extrapolation (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}
with r = h_{i-1} / h_i. The SDE variant solves the reverse SDE the same way: the first-order step
(x_next = (sigma_next / sigma) e^-h x + (1 - e^-2h) D + sigma_next sqrt(1 - e^-2h) z) is DDPM's
posterior, and the second-order term adds (1 - e^-2h) (D_i - D_{i-1}) / (2r) (the "midpoint" form).

As in the authors' code, the last step (to sigma = 0, where h is infinite) is the first-order one
and so returns the denoised estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from ldm.samplers.noise import Generators, randn_like


@torch.no_grad()
def sample_dpmpp_2m(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: Optional[dict[str, Any]] = None,
    callback: Optional[Callable[[dict[str, Any]], None]] = None,
    generator: Generators = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 Alg. 2: second-order multistep, one evaluation per step."""
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
        if sigma_next == 0:
            x = denoised  # the first-order step with h = infinity
            continue
        h = sigma.log() - sigma_next.log()  # lambda_next - lambda
        if old_denoised is None:
            d = denoised  # DPM-Solver++1 for the first step
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised  # Alg. 2, D_i
        x = (sigma_next / sigma) * x - torch.expm1(-h) * d
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
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
    """DPM-Solver++(2M) SDE: the second-order multistep solver of the reverse SDE (eta = 0: the ODE solver)."""
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
        if sigma_next == 0:
            x = denoised
            continue
        h = sigma.log() - sigma_next.log()
        eta_h = eta * h  # eta interpolates between the ODE (0) and the SDE (1)
        # First order: (sigma_next / sigma) e^(-eta h) x + (1 - e^(-(1 + eta) h)) D
        x = (sigma_next / sigma) * torch.exp(-eta_h) * x - torch.expm1(-h - eta_h) * denoised
        if old_denoised is not None:
            r = h_last / h
            x = x - 0.5 * torch.expm1(-h - eta_h) * (denoised - old_denoised) / r
        if eta > 0:
            noise_std = sigma_next * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise
            x = x + randn_like(x, generator) * noise_std
        old_denoised, h_last = denoised, h
    return x
