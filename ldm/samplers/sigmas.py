"""Noise levels at which a sampler evaluates the denoiser.

``discrete_sigmas`` picks a subset of the model's own training sigmas by timestep spacing, as
DDIM (Song et al. 2021) does; the "Common diffusion noise schedules and sample steps are flawed"
paper (Lin et al. 2024, Table 2) defines the leading, linspace and trailing spacings. A final 0 is
appended: the last step returns the denoised estimate.
"""

from __future__ import annotations

import torch

SPACINGS = ("leading", "trailing", "linspace")


def discrete_timesteps(num_train_timesteps: int, steps: int, spacing: str = "trailing") -> torch.Tensor:
    """Descending integer timesteps in [0, num_train_timesteps - 1], `steps` of them."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps}, got {steps}")
    n = num_train_timesteps
    if spacing == "leading":
        # SD's DDIM: every (n // steps)-th timestep, offset by one.
        t = torch.arange(steps) * (n // steps) + 1
        t = t.clamp(max=n - 1)
    elif spacing == "trailing":
        t = torch.round(torch.arange(n, 0, -n / steps)).long() - 1
    elif spacing == "linspace":
        t = torch.linspace(0, n - 1, steps).round().long()
    else:
        raise ValueError(f"unknown timestep spacing '{spacing}'; available: {', '.join(SPACINGS)}")
    return t.flip(0) if spacing != "trailing" else t


def discrete_sigmas(model_sigmas: torch.Tensor, steps: int, spacing: str = "trailing") -> torch.Tensor:
    """Descending sigmas of the chosen timesteps, with 0 appended; shape [steps + 1]."""
    t = discrete_timesteps(model_sigmas.shape[0], steps, spacing).to(model_sigmas.device)
    return torch.cat([model_sigmas[t], model_sigmas.new_zeros(1)])
