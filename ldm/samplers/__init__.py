"""Samplers: plain functions with one signature ``(model, x, sigmas, *, extra_args, callback, generator, **options)``.

``model(x, sigma, **extra_args)`` returns the denoised estimate of x0 for x = x0 + sigma * noise,
with sigma of shape [B]; ``sigmas`` is descending and normally ends at 0 (``ldm.samplers.sigmas``);
a sampler returns x at sigmas[-1]. ``callback`` is called once per step with a dict holding at
least ``i``, ``x``, ``sigma`` and ``denoised``. ``SAMPLERS`` is the registry that the ``sampler``
config group names:

=================  ===========================================  =====================
name               method                                       model calls
=================  ===========================================  =====================
ddpm               DDPM ancestral (Ho et al. 2020)              steps
ddim               DDIM, eta = 0 deterministic (Song et al.)    steps
plms               pseudo linear multistep (Liu et al. 2022)    steps + 1
euler              Euler, Karras et al. 2022 Alg. 2             steps
euler_ancestral    Euler with ancestral noise                   steps
heun               Heun, Karras et al. 2022 Alg. 1/2            2 steps - 1
dpmpp_2m           DPM-Solver++(2M) (Lu et al. 2022)            steps
dpmpp_2m_sde       DPM-Solver++(2M) SDE                         steps
unipc              UniPC, bh2, order 2 (Zhao et al. 2023)       steps
=================  ===========================================  =====================

Randomness. ``generator`` is None (torch's global generator), one ``torch.Generator`` for the
whole batch, or a sequence of B generators, one per sample (``ldm.samplers.noise``). Samplers draw
all their noise through ``randn_like(x, generator)``; with one generator per sample, row b of every
draw comes from generator b alone, so a sample depends only on its own generator and not on the
batch it is in. ``Text2Image`` seeds one generator per image, draws that image's starting noise from
it, and passes the same generators on: a seed gives the same image whatever the batch size, for the
stochastic samplers (ddpm, euler_ancestral, dpmpp_2m_sde, ddim with eta > 0) as for the others.
"""

from __future__ import annotations

from collections.abc import Callable

from ldm.samplers.ddim import sample_ddim
from ldm.samplers.ddpm import sample_ddpm
from ldm.samplers.dpmpp import sample_dpmpp_2m, sample_dpmpp_2m_sde
from ldm.samplers.euler import sample_euler, sample_euler_ancestral
from ldm.samplers.heun import sample_heun
from ldm.samplers.plms import sample_plms
from ldm.samplers.unipc import sample_unipc

SAMPLERS: dict[str, Callable] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "plms": sample_plms,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "unipc": sample_unipc,
}
"""Registry of sampler functions by config name (declared global state)."""

__all__ = [
    "SAMPLERS",
    "get_sampler",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_plms",
    "sample_unipc",
]


def get_sampler(name: str) -> Callable:
    """The sampler function registered as `name`."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler '{name}'; available: {', '.join(sorted(SAMPLERS))}") from None
