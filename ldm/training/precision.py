"""Lightning's precision setting: what ``auto`` means, and whether fused optimizers may be used under it."""

from __future__ import annotations

import logging
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision

log = logging.getLogger(__name__)


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning's precision string; `auto` is bf16-mixed where CUDA supports bf16 (and is used), else 32-true."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if uses_cuda(accelerator) and torch.cuda.is_bf16_supported() else "32-true"


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning's `accelerator` setting puts the run on a CUDA device on this machine."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def fused_allowed(trainer: Optional[pl.Trainer], gradient_clip_val: Optional[float]) -> bool:
    """False when `trainer` clips gradients under mixed precision, which Lightning refuses for fused optimizers."""
    if trainer is None or not gradient_clip_val or not isinstance(trainer.precision_plugin, MixedPrecision):
        return True
    log.info(
        "optimizer: not fused (Lightning does not clip the gradients of fused optimizers under %s)",
        trainer.precision_plugin.precision,
    )
    return False
