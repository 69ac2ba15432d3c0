"""Caption dropout for classifier-free guidance: some training captions become the empty prompt.

Ho & Salimans 2022 train one network for both the conditional and the unconditional model by
dropping the condition with a small probability (SD: 10%); at sampling time the two predictions
are mixed with a guidance scale (``ldm.samplers.guidance``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from ldm.samplers.noise import Generators


def check_dropout(probability: float) -> None:
    """Raise unless `probability` is in [0, 1) (1 would never train the conditional model)."""
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"caption_dropout must be in [0, 1), got {probability}")


def kept_captions(n: int, probability: float, generator: Generators = None) -> Optional[torch.Tensor]:
    """Which of `n` captions to keep (bool, [n], on the CPU): each is dropped with `probability`;
    None when 0. One uniform number per caption, from torch's global generator, one generator for
    all, or one generator per caption."""
    if probability <= 0:
        return None
    if generator is None or isinstance(generator, torch.Generator):
        device = "cpu" if generator is None else generator.device
        return (torch.rand(n, generator=generator, device=device) >= probability).cpu()
    if len(generator) != n:
        raise ValueError(f"got {len(generator)} generators for {n} captions")
    draws = torch.stack([torch.rand((), generator=g, device=g.device).cpu() for g in generator])
    return draws >= probability


def drop_captions(captions: Sequence[str], keep: Optional[torch.Tensor]) -> list[str]:
    """`captions` with the ones not kept replaced by the empty prompt."""
    if keep is None:
        return list(captions)
    return [c if k else "" for c, k in zip(captions, keep.tolist(), strict=True)]


def drop_contexts(context: torch.Tensor, keep: Optional[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """Text states [B, T, D] with the rows not kept replaced by the empty prompt's states [1, T, D]."""
    if keep is None or keep.all():
        return context
    return torch.where(keep.to(context.device)[:, None, None], context, empty.to(context.dtype))
