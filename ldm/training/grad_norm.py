"""The gradient norm of each training step, before clipping, logged as ``train/grad_norm``.

It is measured right after the step's first backward pass, on the parameters of the first
optimizer: the U-Net's (and a trainable text encoder's) in stage 2; the autoencoder's in stage 1,
whose module clips its own gradients before stepping and then runs the discriminator's backward
pass (those gradients are left out). Under a gradient scaler (``16-mixed``) the gradients are still
scaled at that point, so the norm is divided by the scale. Under FSDP each rank holds a shard of
the gradients: the squared norms of the shards are summed over the ranks. One fused norm per step,
no host sync: Lightning reads the value when it logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import FSDPStrategy


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """The 2-norm of all gradients of `parameters` together (parameters without one are left out)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)  # one norm per tensor, fused per device and dtype
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


class GradientNorm(pl.Callback):
    """Logs ``train/grad_norm``: the unclipped, unscaled gradient norm of the first backward pass of
    each training batch, over the first optimizer's parameters."""

    def __init__(self) -> None:
        self._pending = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._pending = True

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._pending or not trainer.optimizers:
            return
        self._pending = False
        parameters = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
        norm = gradient_norm(parameters)
        if isinstance(getattr(trainer, "strategy", None), FSDPStrategy):
            norm = trainer.strategy.reduce(norm.square(), reduce_op="sum").sqrt()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            norm = norm / scaler.get_scale()
        pl_module.log("train/grad_norm", norm)
