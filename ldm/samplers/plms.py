"""PLMS, the pseudo linear multistep sampler (Liu et al. 2022, "Pseudo Numerical Methods for
Diffusion Models on Manifolds", PNDM).

A pseudo numerical method splits a step into a gradient part, the noise estimate eps, and a
transfer part that moves x with a given eps: DDIM's update (the paper's Eq. 9), which in sigma
form is x_next = x + (sigma_next - sigma) * eps. PLMS feeds the transfer part with the fourth-order
Adams-Bashforth combination of the last noise estimates (the gradient part of the paper's PLMS),

    eps' = (55 eps_i - 59 eps_{i-1} + 37 eps_{i-2} - 9 eps_{i-3}) / 24,

starting up with the lower-order Adams-Bashforth formulas; as in LDM's PLMS and diffusers'
PNDMScheduler(skip_prk_steps=True), the very first step is a pseudo improved Euler step (the mean
of the estimates at both ends), so PLMS makes steps + 1 model evaluations. The coefficients assume
equal steps in the timestep index, whatever the sigma spacing. The last step (to sigma = 0) also
uses eps', as diffusers does with set_alpha_to_one=True. The measured order is about 2 (tests): the
weights assume equal steps, and sigma steps are not equal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from ldm.samplers.noise import Generators


def adams_bashforth(history: list[torch.Tensor]) -> torch.Tensor:
    """The Adams-Bashforth combination of up to four past slopes (newest last), for equal steps."""
    if len(history) == 1:
        return history[-1]
    if len(history) == 2:
        return (3 * history[-1] - history[-2]) / 2
    if len(history) == 3:
        return (23 * history[-1] - 16 * history[-2] + 5 * history[-3]) / 12
    return (55 * history[-1] - 59 * history[-2] + 37 * history[-3] - 9 * history[-4]) / 24


@torch.no_grad()
def sample_plms(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: Optional[dict[str, Any]] = None,
    callback: Optional[Callable[[dict[str, Any]], None]] = None,
    generator: Generators = None,
) -> torch.Tensor:
    """PLMS (pseudo linear multistep): DDIM's transfer with Adams-Bashforth noise estimates."""
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    history: list[torch.Tensor] = []  # past eps, newest last
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
        eps = (x - denoised) / sigma
        if not history and sigma_next > 0:
            # Pseudo improved Euler: transfer with eps, re-estimate at the end, transfer with the mean.
            x_pred = x + (sigma_next - sigma) * eps
            eps_next = (x_pred - model(x_pred, sigma_next * ones, **extra_args)) / sigma_next
            eps_prime = (eps + eps_next) / 2
        else:
            eps_prime = adams_bashforth([*history[-3:], eps])
        history = [*history[-3:], eps]
        x = x + (sigma_next - sigma) * eps_prime  # the transfer part, the paper's Eq. 9 in sigma form
    return x
