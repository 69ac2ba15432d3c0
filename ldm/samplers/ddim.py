"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"), in the sigma form of EDM.

With alpha_bar = 1 / (1 + sigma^2), Eq. 12 of the DDIM paper divided by sqrt(alpha_bar_next) is

    x_next = x0_hat + sqrt(sigma_next^2 - s^2 (1 + sigma_next^2)) * eps_hat + s sqrt(1 + sigma_next^2) * z

where s is the DDIM noise scale (Eq. 16) and z ~ N(0, I). eta = 0 gives the deterministic sampler,
which is Euler's method on the probability-flow ODE; eta = 1 is DDPM's ancestral sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from ldm.samplers.noise import Generators, randn_like


@torch.no_grad()
def sample_ddim(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: Optional[dict[str, Any]] = None,
    callback: Optional[Callable[[dict[str, Any]], None]] = None,
    generator: Generators = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """Run DDIM from x at sigmas[0] down to sigmas[-1] (normally 0); returns the final x."""
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
        if sigma_next == 0:
            x = denoised
            continue
        eps = (x - denoised) / sigma
        alpha_bar = 1.0 / (1.0 + sigma**2)
        alpha_bar_next = 1.0 / (1.0 + sigma_next**2)
        # Eq. 16: s^2 = eta^2 (1 - a_next) / (1 - a) * (1 - a / a_next)
        s2 = eta**2 * (1 - alpha_bar_next) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_next)
        x = denoised + (sigma_next**2 - s2 / alpha_bar_next).clamp(min=0).sqrt() * eps
        if eta > 0:
            x = x + (s2 / alpha_bar_next).sqrt() * randn_like(x, generator)
    return x
