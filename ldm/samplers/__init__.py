"""Samplers: plain functions with one signature ``(model, x, sigmas, *, extra_args, callback, generator, **options)``.

``model(x, sigma, **extra_args)`` returns the denoised estimate of x0; ``sigmas`` is descending
and normally ends at 0. ``SAMPLERS`` is the registry that the ``sampler`` config group names.
"""

from __future__ import annotations

from collections.abc import Callable

from ldm.samplers.ddim import sample_ddim

SAMPLERS: dict[str, Callable] = {
    "ddim": sample_ddim,
}


def get_sampler(name: str) -> Callable:
    """The sampler function registered as `name`."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler '{name}'; available: {', '.join(sorted(SAMPLERS))}") from None
