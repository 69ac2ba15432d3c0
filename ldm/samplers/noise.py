"""Where a sampler's random numbers come from: one generator for the batch, or one per sample.

A stochastic sampler (ancestral, SDE, DDIM with eta > 0) draws fresh noise at every step. When
``generator`` is a sequence of B generators, row b of every draw comes from generator b alone, so a
sample's noise does not depend on what else is in the batch: the same seed gives the same image
whatever the batch size. The pipeline seeds one generator per image and draws that image's starting
noise from it first, then hands the same generators to the sampler. Noise is drawn in float32 on the
generator's device and then cast and moved to x's, so a seed's noise does not depend on the compute
dtype either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch

Generators = Optional[Union[torch.Generator, Sequence[torch.Generator]]]
"""None (the global RNG), one generator for the whole batch, or one generator per sample."""


def per_sample_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per seed, each seeded with that seed alone."""
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def randn_like(x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Standard normal noise of x's shape, dtype and device, drawn as `generator` says.

    With a sequence of generators, row b is drawn from generator b, so it is independent of the
    other rows.
    """
    if generator is None:
        return torch.randn(x.shape, device=x.device).to(x.dtype)
    if isinstance(generator, torch.Generator):
        noise = torch.randn(x.shape, generator=generator, device=generator.device)
    else:
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]} samples")
        noise = torch.stack(
            [torch.randn(x.shape[1:], generator=g, device=g.device) for g in generator]
        )  # b ...
    return noise.to(x.device, x.dtype)


def uniform_rows(
    n: int, k: int, generator: Generators = None, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """U[0, 1) draws of shape [n, k] on `device`; with a sequence of n generators, row b from generator b."""
    if generator is None or isinstance(generator, torch.Generator):
        where = device if generator is None else generator.device
        return torch.rand((n, k), generator=generator, device=where).to(device)
    if len(generator) != n:
        raise ValueError(f"got {len(generator)} generators for a batch of {n} samples")
    return torch.stack([torch.rand(k, generator=g, device=g.device) for g in generator]).to(device)
