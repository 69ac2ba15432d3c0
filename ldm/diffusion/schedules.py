"""Discrete noise schedules: betas, cumulative alphas and the equivalent noise levels sigma.

Notation follows Ho et al. 2020 (DDPM) for the discrete chain and Karras et al. 2022 (EDM) for
sigma: a noisy latent ``z_t = sqrt(alpha_bar_t) * z_0 + sqrt(1 - alpha_bar_t) * eps`` equals
``sqrt(alpha_bar_t) * (z_0 + sigma_t * eps)`` with ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``.

A schedule rescaled to zero terminal SNR (Lin et al. 2024) has ``alpha_bar_T = 0``: its last
sigma is infinite. The training objective uses it as is (z_T is pure noise); the denoiser wrapper
replaces that one value by a finite stand-in (see ``ldm.diffusion.parametrization``).
"""

from __future__ import annotations

import math

import torch

from ldm.config import DiffusionConfig

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
MAX_COSINE_BETA = 0.999
"""Betas of the cosine schedule are clipped to this (Nichol & Dhariwal 2021, Sec. 3.2)."""


def make_betas(
    kind: str, num_timesteps: int, linear_start: float, linear_end: float, *, cosine_s: float = 0.008
) -> torch.Tensor:
    """Betas of a DDPM chain, float64, shape [num_timesteps].

    ``linear`` is Ho et al. 2020 (1e-4 to 0.02); ``scaled_linear`` is linear in sqrt(beta), the
    schedule of LDM and Stable Diffusion (0.00085 to 0.012); ``cosine`` is Nichol & Dhariwal 2021
    (Eq. 17, offset ``cosine_s``; linear_start and linear_end are not used).
    """
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}")
    if kind == "cosine":
        if cosine_s < 0:
            raise ValueError(f"cosine_s must be >= 0, got {cosine_s}")
        return cosine_betas(num_timesteps, cosine_s)
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule '{kind}'; available: {', '.join(BETA_SCHEDULES)}")
    if not 0.0 < linear_start < linear_end < 1.0:
        raise ValueError(f"need 0 < linear_start < linear_end < 1, got {linear_start}, {linear_end}")
    if kind == "linear":
        return torch.linspace(linear_start, linear_end, num_timesteps, dtype=torch.float64)
    return torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021: alpha_bar(t) = f(t) / f(0), f(t) = cos((t / T + s) / (1 + s) * pi / 2)^2 (Eq. 17).

    beta_t = 1 - alpha_bar(t + 1) / alpha_bar(t), clipped to 0.999 so that the end of the chain
    stays finite; float64, shape [num_timesteps].
    """
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(max=MAX_COSINE_BETA)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha_bar) so that the last is 0, the first unchanged.

    The last beta becomes 1: z_T is pure noise (SNR 0), which the network must then learn to map
    to the data mean, closing the gap between training and sampling from N(0, I).
    """
    alphas_bar_sqrt = alphas_cumprod_from_betas(betas.double()).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s) (Ho et al. 2020, Eq. 4)."""
    return torch.cumprod(1.0 - betas, dim=0)


def alphas_cumprod_from_config(cfg: DiffusionConfig) -> torch.Tensor:
    """The training schedule's alpha_bar (float64, [num_timesteps]) described by a DiffusionConfig."""
    betas = make_betas(
        cfg.beta_schedule, cfg.num_timesteps, cfg.linear_start, cfg.linear_end, cosine_s=cfg.cosine_s
    )
    if cfg.zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return alphas_cumprod_from_betas(betas)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Noise level of each discrete timestep in the variance-exploding form: sqrt((1 - a) / a)."""
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()


def snr_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) = 1 / sigma^2 (0 at a zero-terminal-SNR end)."""
    return alphas_cumprod / (1.0 - alphas_cumprod)
