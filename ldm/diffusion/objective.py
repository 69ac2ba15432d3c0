"""The DDPM training objective on latents: sample t and noise, noise the latent, regress the target.

Ho et al. 2020 (Eq. 14, the "simple" loss) for eps; Salimans & Ho 2022 for v; x0 regresses the
clean latent directly. The loss is the mean squared error over all elements, optionally weighted
per sample (``ldm.diffusion.weighting``: min-SNR-gamma). Offset noise (Guttenberg 2023) adds a
per-sample, per-channel constant to the noise, so that the model can learn to change an image's
mean brightness.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ldm.conditioning.concat import Context, call_network
from ldm.diffusion.parametrization import check_parameterization
from ldm.diffusion.schedules import snr_from_alphas_cumprod
from ldm.diffusion.weighting import check_loss_weighting, loss_weights
from ldm.samplers.noise import Generators, randn_like

if TYPE_CHECKING:
    from ldm.config import DiffusionConfig


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


def sample_noise(z0: torch.Tensor, offset_noise: float = 0.0, generator: Generators = None) -> torch.Tensor:
    """N(0, I) shaped like z0, plus offset_noise * N(0, 1) per sample and channel when offset_noise > 0."""
    noise = randn_like(z0, generator)
    if offset_noise > 0:
        offset = randn_like(z0[:, :, :1, :1], generator)  # [B, C, 1, 1], broadcast over H, W
        noise = noise + offset_noise * offset
    return noise


def sample_timesteps(
    n: int, num_timesteps: int, device: torch.device, generator: Generators = None
) -> torch.Tensor:
    """t ~ U{0, ..., num_timesteps - 1} for n samples (one generator for all, or one per sample), on `device`."""
    if generator is None or isinstance(generator, torch.Generator):
        where = device if generator is None else generator.device
        return torch.randint(0, num_timesteps, (n,), device=where, generator=generator).to(device)
    if len(generator) != n:
        raise ValueError(f"got {len(generator)} generators for a batch of {n} samples")
    return torch.stack(
        [torch.randint(0, num_timesteps, (), device=g.device, generator=g) for g in generator]
    ).to(device)


class DiffusionObjective(nn.Module):
    """Holds the training schedule and computes the denoising loss of a network on clean latents."""

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        parameterization: str = "eps",
        *,
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        offset_noise: float = 0.0,
    ):
        super().__init__()
        check_parameterization(parameterization)
        check_loss_weighting(loss_weighting, min_snr_gamma)
        if offset_noise < 0:
            raise ValueError(f"offset_noise must be >= 0, got {offset_noise}")
        if parameterization == "eps" and alphas_cumprod[-1] == 0:
            raise ValueError(
                "a zero-terminal-SNR schedule needs parameterization v or x0: at SNR 0 the input is the "
                "noise itself, so predicting eps says nothing about x0 (Lin et al. 2024, Sec. 3.2)"
            )
        self.parameterization = parameterization
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = min_snr_gamma
        self.offset_noise = offset_noise
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    @classmethod
    def from_config(cls, cfg: DiffusionConfig, alphas_cumprod: torch.Tensor) -> DiffusionObjective:
        """The objective a DiffusionConfig describes, on the schedule `alphas_cumprod` (built from it)."""
        return cls(
            alphas_cumprod,
            cfg.parameterization,
            loss_weighting=cfg.loss_weighting,
            min_snr_gamma=cfg.min_snr_gamma,
            offset_noise=cfg.offset_noise,
        )

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def forward(
        self,
        network: nn.Module,
        z0: torch.Tensor,
        context: Context,
        generator: Generators = None,
        element_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean (weighted) squared error of network(z_t, t, context) against the target, t ~ U{0..T-1};
        `context`: text tokens, or a Conditioning whose image is concatenated to z_t; `generator`:
        None (the global one), one for the batch, or one per sample; `element_weights`: weights
        broadcast over z0's elements, each sample's error their weighted mean (None: all equal)."""
        t = sample_timesteps(z0.shape[0], self.num_timesteps, z0.device, generator)
        noise = sample_noise(z0, self.offset_noise, generator)
        a_t = self.alphas_cumprod[t]
        z_t = q_sample(z0, a_t, noise)
        prediction = call_network(network, z_t, t, context).float()
        target = training_target(z0, noise, a_t, self.parameterization).float()
        if element_weights is None:
            if self.loss_weighting == "uniform":
                return F.mse_loss(prediction, target)
            per_sample = (prediction - target).pow(2).flatten(1).mean(dim=1)  # [B]
        else:
            weights = element_weights.float().expand_as(target)
            weighted = (weights * (prediction - target).pow(2)).flatten(1).sum(1)
            per_sample = weighted / weights.flatten(1).sum(1)
            if self.loss_weighting == "uniform":
                return per_sample.mean()
        weights = loss_weights(
            snr_from_alphas_cumprod(a_t), self.parameterization, self.loss_weighting, self.min_snr_gamma
        )
        return (weights * per_sample).mean()
