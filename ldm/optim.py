"""Adam(W) construction shared by the two training stages: PyTorch's fused kernel wherever it runs.

``torch.optim.Adam``/``AdamW`` default to a loop over the parameters on CPU (and a multi-tensor
``foreach`` loop on CUDA). The fused implementation updates every parameter in one kernel and is
numerically the same algorithm: on this project's 2-core CPU machine it steps SD 2's
866M-parameter U-Net in 0.45 s against 2.61 s for the default loop (BENCHMARKS.md, "Optimizer
step"), a fixed cost of every training step. It needs floating-point parameters on a device
with fused kernels (CPU and CUDA here); elsewhere the default implementation is used.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

FUSED_DEVICE_TYPES = frozenset({"cpu", "cuda"})
"""Device types whose parameters PyTorch's fused Adam/AdamW kernels update (torch >= 2.4)."""


def fused_supported(parameters: Iterable[torch.Tensor]) -> bool:
    """Whether every parameter is floating point on a device with fused Adam kernels."""
    parameters = list(parameters)
    return bool(parameters) and all(
        p.is_floating_point() and p.device.type in FUSED_DEVICE_TYPES for p in parameters
    )


def _parameters_of(groups: list[dict[str, Any]] | list[torch.Tensor]) -> list[torch.Tensor]:
    if groups and isinstance(groups[0], dict):
        return [p for group in groups for p in group["params"]]
    return list(groups)


def adamw(groups: list[dict[str, Any]] | list[torch.Tensor], **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over `groups` (parameters or parameter groups), fused where supported."""
    return torch.optim.AdamW(groups, fused=fused_supported(_parameters_of(groups)), **kwargs)


def adam(groups: list[dict[str, Any]] | list[torch.Tensor], **kwargs: Any) -> torch.optim.Adam:
    """``torch.optim.Adam`` over `groups` (parameters or parameter groups), fused where supported."""
    return torch.optim.Adam(groups, fused=fused_supported(_parameters_of(groups)), **kwargs)
