"""DDPM's ancestral sampler (Ho et al. 2020, "Denoising Diffusion Probabilistic Models").

Each step samples the forward process posterior q(z_prev | z_t, z_0) with z_0 replaced by the
model's estimate, in the variance-preserving variables z = sqrt(alpha_bar) x of the chain
(Eq. 6-7): with alpha_t = alpha_bar_t / alpha_bar_prev and beta_t = 1 - alpha_t (so that strided
steps are steps of the chain they imply),

    mean  = sqrt(alpha_bar_prev) beta_t / (1 - alpha_bar_t) z_0 + sqrt(alpha_t) (1 - alpha_bar_prev) / (1 - alpha_bar_t) z_t
    var   = (1 - alpha_bar_prev) / (1 - alpha_bar_t) beta_t        ("fixed small", beta tilde)

then converted back to the sigma form. The same step is DDIM with eta = 1 and Euler ancestral with
eta = 1, derived there from other equations; tests check that all three agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from ldm.samplers.noise import Generators, randn_like


@torch.no_grad()
def sample_ddpm(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: Optional[dict[str, Any]] = None,
    callback: Optional[Callable[[dict[str, Any]], None]] = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Ancestral sampling of DDPM's reverse chain with the posterior variance beta tilde."""
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
        if sigma_next == 0:
            x = denoised  # alpha_bar_prev = 1: the posterior is a point mass at z_0
            continue
        alpha_bar, alpha_bar_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
        alpha = alpha_bar / alpha_bar_prev
        beta = 1 - alpha
        z_t = alpha_bar.sqrt() * x
        # Eq. 7: the posterior mean and variance of z_prev
        mean = (alpha_bar_prev.sqrt() * beta * denoised + alpha.sqrt() * (1 - alpha_bar_prev) * z_t) / (
            1 - alpha_bar
        )
        var = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
        z_prev = mean + var.sqrt() * randn_like(x, generator)
        x = z_prev / alpha_bar_prev.sqrt()
    return x
