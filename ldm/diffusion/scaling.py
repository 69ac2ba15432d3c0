"""The latent scale factor: 1 / std of the autoencoder's latents (LDM's scale_by_std).

Diffusion assumes data of roughly unit variance; scaling the latents by this factor makes the
noise schedule mean the same thing whatever the autoencoder's latent statistics are. Where a run
or a conversion takes its factor from (the config, a weights file, stage 1's statistics, an
estimate) is decided in one place, ``choose_scale_factor``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Optional, Union

import torch
from torch import nn


@torch.no_grad()
def estimate_scale_factor(autoencoder: nn.Module, images: Iterable[torch.Tensor], max_batches: int) -> float:
    """1 / std over all elements of posterior samples of up to `max_batches` image batches."""
    device = next(autoencoder.parameters()).device
    latents = (autoencoder.encode(x.to(device)).sample() for x in images)
    return scale_factor_of_latents(latents, max_batches)


@torch.no_grad()
def scale_factor_of_latents(latents: Iterable[torch.Tensor], max_batches: int) -> float:
    """1 / std over all elements of up to `max_batches` batches of (unscaled) latents."""
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    flat = [z.flatten().float() for z in itertools.islice(latents, max_batches)]
    if not flat:
        raise ValueError("no batches to estimate the latent scale factor from")
    std = torch.cat(flat).std().item()
    if not std > 0:
        raise ValueError(f"latent std is {std}: the autoencoder's latents are degenerate")
    return 1.0 / std


Candidate = tuple[str, Union[Optional[float], Callable[[], Optional[float]]]]
"""(where the value comes from, the value or a function that finds it, None when there is none)."""


def choose_scale_factor(candidates: Iterable[Candidate]) -> tuple[float, str]:
    """The first candidate with a value, and its source; functions are called in order, only as needed.

    Callers list the sources by precedence, e.g. the config's value, then the weights file's, then
    stage 1's stored statistics, then an estimate from the data.
    """
    for source, candidate in candidates:
        value = candidate() if callable(candidate) else candidate
        if value is not None:
            return float(value), source
    raise ValueError("no latent scale factor: set diffusion.scale_factor")
