"""The denoiser wrapper: any U-Net parametrisation (eps, v, x0) as one function D(x, sigma) -> x0.

Samplers work in the variance-exploding form ``x = x0 + sigma * eps`` (Karras et al. 2022, EDM);
a U-Net trained on the variance-preserving chain sees ``c_in * x = sqrt(alpha_bar) * x``. The
wrapper is EDM's preconditioning (Eq. 7: D = c_skip * x + c_out * F(c_in * x, c_noise)) with the
coefficients of each parametrisation of a discrete DDPM model; c_noise is the (fractional)
training timestep whose sigma equals the requested sigma.

The wrapped network is stored as ``diffusion_model`` so that a wrapper held as ``model`` gives
the Stable Diffusion state-dict keys ``model.diffusion_model.*``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ldm.conditioning.concat import Context, call_network
from ldm.diffusion.schedules import sigmas_from_alphas_cumprod

PARAMETERIZATIONS = ("eps", "v", "x0")


def check_parameterization(parameterization: str) -> None:
    """Raise a clear error for an unknown parametrisation name."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown parameterization '{parameterization}'; available: {', '.join(PARAMETERIZATIONS)}"
        )


def preconditioning(sigma: torch.Tensor, parameterization: str) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in) for a discrete VP model, each broadcastable like sigma.

    eps: D = x - sigma * eps_hat.  v (Salimans & Ho 2022, with alpha = 1/sqrt(1 + sigma^2)):
    D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v_hat.  x0: D = x0_hat.
    """
    c_in = (sigma**2 + 1.0).rsqrt()
    if parameterization == "eps":
        return torch.ones_like(sigma), -sigma, c_in
    if parameterization == "v":
        return 1.0 / (sigma**2 + 1.0), -sigma * c_in, c_in
    if parameterization == "x0":
        return torch.zeros_like(sigma), torch.ones_like(sigma), c_in
    check_parameterization(parameterization)
    raise AssertionError("unreachable")


TERMINAL_ALPHA_CUMPROD = 2.0**-24
"""Stand-in for alpha_bar_T = 0 of a zero-terminal-SNR schedule (as diffusers' Euler scheduler): sigma_T ~ 4096."""


def finite_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alpha_bar with an exact 0 (zero terminal SNR, Lin et al. 2024) replaced by TERMINAL_ALPHA_CUMPROD.

    sigma_T would be infinite. At sigma ~ 4096 a sampler starting from x = sqrt(1 + sigma^2) z_T
    feeds the network c_in * x = z_T at timestep T, the input it was trained on there, and gets
    D(x, sigma_T) = x0_hat exactly for x0 and x0_hat + z_T / 4096 for v (eps is refused with such a
    schedule). Samplers so begin at the true last timestep, as Lin et al. (Sec. 3.3) ask.
    """
    return torch.where(
        alphas_cumprod > 0, alphas_cumprod, torch.full_like(alphas_cumprod, TERMINAL_ALPHA_CUMPROD)
    )


class DiscreteDenoiser(nn.Module):
    """Wraps a U-Net trained on a discrete schedule into D(x, sigma, context) -> x0."""

    def __init__(
        self, diffusion_model: nn.Module, alphas_cumprod: torch.Tensor, parameterization: str = "eps"
    ):
        super().__init__()
        check_parameterization(parameterization)
        self.diffusion_model = diffusion_model
        self.parameterization = parameterization
        sigmas = sigmas_from_alphas_cumprod(finite_alphas_cumprod(alphas_cumprod.double()))
        # Derived from the config, so not saved in checkpoints.
        self.register_buffer("sigmas", sigmas.float(), persistent=False)
        self.register_buffer("log_sigmas", sigmas.log().float(), persistent=False)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep whose sigma is `sigma`, by linear interpolation in log sigma."""
        log_sigma = sigma.float().clamp(min=1e-10).log()
        dists = log_sigma[:, None] - self.log_sigmas[None, :]  # [B, T]
        low = dists.ge(0).cumsum(dim=1).argmax(dim=1).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        low_s, high_s = self.log_sigmas[low], self.log_sigmas[high]
        w = ((low_s - log_sigma) / (low_s - high_s)).clamp(0, 1)
        return (1 - w) * low + w * high

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma of a (fractional) timestep, interpolated in log sigma."""
        t = t.float()
        low = t.floor().long().clamp(0, self.log_sigmas.shape[0] - 1)
        high = t.ceil().long().clamp(0, self.log_sigmas.shape[0] - 1)
        w = t - t.floor()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: Context,
        guidance: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Denoised estimate of x0 from x = x0 + sigma * noise; sigma has shape [B]; `context`: the text
        tokens, or a Conditioning whose image is concatenated to c_in * x (ldm.conditioning.concat);
        `guidance`, the scale w per sample, goes to a network that takes it (a guidance-distilled U-Net)."""
        c_skip, c_out, c_in = (c[:, None, None, None] for c in preconditioning(sigma, self.parameterization))
        t = self.sigma_to_t(sigma)
        model_output = call_network(self.diffusion_model, x * c_in, t, context, guidance=guidance)
        return c_skip * x + c_out * model_output
