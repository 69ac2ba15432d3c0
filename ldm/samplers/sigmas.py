"""Noise levels at which a sampler evaluates the denoiser: descending, with a final 0 appended.

``discrete_sigmas`` picks a subset of the model's own training sigmas by timestep spacing, as
DDIM (Song et al. 2021) does; the "Common diffusion noise schedules and sample steps are flawed"
paper (Lin et al. 2024, Table 2) defines the leading, linspace and trailing spacings.
``karras_sigmas`` (Karras et al. 2022, Eq. 5, rho = 7) and ``exponential_sigmas`` (uniform in
log sigma) are continuous schedules between the model's sigma_min and sigma_max; the denoiser
wrapper interpolates the timestep for sigmas off the training grid. The final 0 means that the
last step returns the denoised estimate.
"""

from __future__ import annotations

import math

import torch

SPACINGS = ("leading", "trailing", "linspace")
SCHEDULES = ("discrete", "karras", "exponential")


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


def _check_range(steps: int, sigma_min: float, sigma_max: float) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")


def karras_sigmas(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Karras et al. 2022, Eq. 5: sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, then 0."""
    _check_range(steps, sigma_min, sigma_max)
    ramp = (
        torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    )
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device, dtype)


def exponential_sigmas(
    steps: int,
    sigma_min: float,
    sigma_max: float,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Sigmas uniform in log sigma from sigma_max down to sigma_min (equal steps in DPM-Solver's lambda), then 0."""
    _check_range(steps, sigma_min, sigma_max)
    if steps == 1:
        sigmas = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64).exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device, dtype)


def check_schedule(schedule: str) -> None:
    """Raise a clear error for an unknown schedule name."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown sigma schedule '{schedule}'; available: {', '.join(SCHEDULES)}")


def get_sigmas(
    model_sigmas: torch.Tensor, steps: int, schedule: str = "discrete", spacing: str = "trailing"
) -> torch.Tensor:
    """The `schedule` of `steps` sigmas for a model whose training sigmas (ascending) are `model_sigmas`.

    ``discrete`` uses `spacing`; ``karras`` and ``exponential`` span the model's [sigma_min, sigma_max].
    """
    check_schedule(schedule)
    if schedule == "discrete":
        return discrete_sigmas(model_sigmas, steps, spacing)
    sigma_min, sigma_max = model_sigmas[0].item(), model_sigmas[-1].item()
    options = {"device": model_sigmas.device, "dtype": model_sigmas.dtype}
    if schedule == "karras":
        return karras_sigmas(steps, sigma_min, sigma_max, **options)
    return exponential_sigmas(steps, sigma_min, sigma_max, **options)
