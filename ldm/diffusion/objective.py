"""The DDPM training objective on latents: sample t and noise, noise the latent, regress the target.

Ho et al. 2020 (Eq. 14, the "simple" loss) for eps; Salimans & Ho 2022 for v; x0 regresses the
clean latent directly. The loss is the mean squared error over all elements.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ldm.diffusion.parametrization import check_parameterization


def q_sample(z0: torch.Tensor, alphas_cumprod_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z_t = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise (Ho et al. 2020, Eq. 4)."""
    a = alphas_cumprod_t[:, None, None, None]
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def training_target(
    z0: torch.Tensor, noise: torch.Tensor, alphas_cumprod_t: torch.Tensor, parameterization: str
) -> torch.Tensor:
    """What the network regresses: eps, v = sqrt(a) eps - sqrt(1 - a) z0, or z0."""
    if parameterization == "eps":
        return noise
    if parameterization == "v":
        a = alphas_cumprod_t[:, None, None, None]
        return a.sqrt() * noise - (1 - a).sqrt() * z0
    if parameterization == "x0":
        return z0
    check_parameterization(parameterization)
    raise AssertionError("unreachable")


class DiffusionObjective(nn.Module):
    """Holds the training schedule and computes the denoising loss of a network on clean latents."""

    def __init__(self, alphas_cumprod: torch.Tensor, parameterization: str = "eps"):
        super().__init__()
        check_parameterization(parameterization)
        self.parameterization = parameterization
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def forward(
        self,
        network: nn.Module,
        z0: torch.Tensor,
        context: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Mean squared error of network(z_t, t, context) against the target, t ~ U{0..T-1}."""
        b = z0.shape[0]
        t = torch.randint(0, self.num_timesteps, (b,), device=z0.device, generator=generator)
        noise = torch.randn(z0.shape, device=z0.device, dtype=z0.dtype, generator=generator)
        a_t = self.alphas_cumprod[t]
        z_t = q_sample(z0, a_t, noise)
        prediction = network(z_t, t, context)
        return F.mse_loss(prediction.float(), training_target(z0, noise, a_t, self.parameterization).float())
