"""Adam(W) for both training stages (PyTorch's fused kernel where allowed), and the learning-rate schedule.

``torch.optim.Adam``/``AdamW`` default to a loop over the parameters on CPU (and a multi-tensor
``foreach`` loop on CUDA). The fused implementation updates every parameter in one kernel and is
numerically the same algorithm: on this project's 2-core CPU machine it steps SD 2's
866M-parameter U-Net in 0.45 s against 2.61 s for the default loop (BENCHMARKS.md, "Optimizer
step"), a fixed cost of every training step. It needs floating-point parameters on a device
with fused kernels (CPU and CUDA here); elsewhere the default implementation is used.

Lightning refuses to clip the gradients of an optimizer that unscales them inside its own step
(fused ones) under mixed precision, bf16 included; runs that clip under mixed precision, such as
the default bf16-mixed GPU run, therefore get the default (``foreach`` on CUDA) implementation
(``allow_fused=False``, decided by ``ldm.training.precision.fused_allowed``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, Optional

import torch

log = logging.getLogger(__name__)

FUSED_DEVICE_TYPES = frozenset({"cpu", "cuda"})
"""Device types whose parameters PyTorch's fused Adam/AdamW kernels update (torch >= 2.4)."""


def fused_supported(parameters: Iterable[torch.Tensor]) -> bool:
    """Whether every parameter is floating point on a device with fused Adam kernels."""
    parameters = list(parameters)
    return bool(parameters) and all(
        p.is_floating_point() and p.device.type in FUSED_DEVICE_TYPES for p in parameters
    )


def _fused(groups: list[dict[str, Any]] | list[torch.Tensor], allow_fused: bool) -> Optional[bool]:
    """The optimizers' ``fused`` argument: True where supported and allowed, else None (PyTorch's default)."""
    parameters = (
        [p for g in groups for p in g["params"]] if groups and isinstance(groups[0], dict) else groups
    )
    return (allow_fused and fused_supported(parameters)) or None


def adamw(
    groups: list[dict[str, Any]] | list[torch.Tensor], *, allow_fused: bool = True, **kwargs: Any
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over `groups` (parameters or parameter groups), fused where supported and allowed."""
    return torch.optim.AdamW(groups, fused=_fused(groups, allow_fused), **kwargs)


def adam(
    groups: list[dict[str, Any]] | list[torch.Tensor], *, allow_fused: bool = True, **kwargs: Any
) -> torch.optim.Adam:
    """``torch.optim.Adam`` over `groups` (parameters or parameter groups), fused where supported and allowed."""
    return torch.optim.Adam(groups, fused=_fused(groups, allow_fused), **kwargs)


LR_SCHEDULES = ("constant", "cosine")
"""Learning rate after warm-up: constant, or cosine decay to zero at max_steps."""


def check_lr_schedule(schedule: str) -> None:
    """Raise for an unknown learning-rate schedule."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule '{schedule}'; available: {', '.join(LR_SCHEDULES)}")


def lr_multiplier(step: int, *, warmup_steps: int, schedule: str, max_steps: int) -> float:
    """The factor on the base learning rate at optimizer step `step` (0-based): a linear warm-up
    over `warmup_steps`, then constant or a cosine decay that reaches 0 at `max_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0
