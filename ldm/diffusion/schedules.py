"""Discrete noise schedules: betas, cumulative alphas and the equivalent noise levels sigma.

Notation follows Ho et al. 2020 (DDPM) for the discrete chain and Karras et al. 2022 (EDM) for
sigma: a noisy latent ``z_t = sqrt(alpha_bar_t) * z_0 + sqrt(1 - alpha_bar_t) * eps`` equals
``sqrt(alpha_bar_t) * (z_0 + sigma_t * eps)`` with ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``.
"""

from __future__ import annotations

import torch

BETA_SCHEDULES = ("linear", "scaled_linear")


def make_betas(kind: str, num_timesteps: int, linear_start: float, linear_end: float) -> torch.Tensor:
    """Betas of a DDPM chain, float64, shape [num_timesteps].

    ``linear`` is Ho et al. 2020 (1e-4 to 0.02); ``scaled_linear`` is linear in sqrt(beta), the
    schedule of LDM and Stable Diffusion (0.00085 to 0.012).
    """
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}")
    if not 0.0 < linear_start < linear_end < 1.0:
        raise ValueError(f"need 0 < linear_start < linear_end < 1, got {linear_start}, {linear_end}")
    if kind == "linear":
        return torch.linspace(linear_start, linear_end, num_timesteps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    raise ValueError(f"unknown beta schedule '{kind}'; available: {', '.join(BETA_SCHEDULES)}")


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s) (Ho et al. 2020, Eq. 4)."""
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Noise level of each discrete timestep in the variance-exploding form: sqrt((1 - a) / a)."""
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()
