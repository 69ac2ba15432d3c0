"""Steps with a non-finite loss or gradient are skipped on every rank together, counted and logged.

After the backward pass (and before clipping and the optimizer step), every rank checks its
gradients; one all-reduce tells all ranks whether any rank saw a NaN or Inf, so that they skip
together (no rank steps alone, none waits for another). A skipped step drops the gradients, so
the optimizer leaves the weights and its state as they were, and the EMA is not updated
(``LatentDiffusionModule``). The step still counts (the data, the learning-rate schedule and the
step number move on). After ``max_bad_steps`` skipped steps in a row the run stops with a clear
message and a checkpoint whose weights are those from before the first of them.

With a gradient scaler (``16-mixed``) the scaler's own inf/NaN handling applies instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from ldm.training.run_checkpoints import any_rank

log = logging.getLogger(__name__)


class NonFiniteTraining(ValueError):
    """Too many non-finite steps in a row: the run cannot go on."""


def gradients_finite(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """Whether every gradient of `parameters` is finite (parameters without one are ignored)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())


def skip_if_nonfinite(trainer: pl.Trainer, parameters: list[torch.nn.Parameter]) -> bool:
    """Drop the gradients of `parameters` on every rank when any rank's are non-finite; True if dropped."""
    (bad,) = any_rank(trainer, [not gradients_finite(parameters)])
    if bad:
        for p in parameters:
            p.grad = None
    return bad


class NonFiniteGuard(pl.Callback):
    """Skips optimizer steps whose gradients are non-finite on any rank; stops after `max_bad_steps`
    in a row, saving a checkpoint to `dirpath` first. Sets ``pl_module.step_skipped`` each step."""

    def __init__(self, max_bad_steps: int, dirpath: Optional[str | Path] = None):
        if max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be >= 1, got {max_bad_steps}")
        self.max_bad_steps = max_bad_steps
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.skipped = 0
        self.in_a_row = 0
        self.first_bad_step: Optional[int] = None

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # 16-mixed: the GradScaler skips non-finite steps itself
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        skipped = skip_if_nonfinite(trainer, parameters)
        pl_module.step_skipped = skipped
        if not skipped:
            self.in_a_row, self.first_bad_step = 0, None
            return
        step = trainer.global_step
        self.skipped += 1
        self.in_a_row += 1
        if self.first_bad_step is None:
            self.first_bad_step = step
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in getattr(pl_module, "loss_terms", {}).items())
        log.warning(
            "step %d: non-finite gradients (%s): optimizer step skipped (%d in a row, %d in all)",
            step,
            terms or "no loss terms recorded",
            self.in_a_row,
            self.skipped,
        )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        pl_module.log("train/skipped_steps", float(self.skipped), rank_zero_only=True)
        if self.in_a_row < self.max_bad_steps:
            return
        where = "not saved (no checkpoint folder)"
        if self.dirpath is not None:
            path = self.dirpath / f"nonfinite-step-{trainer.global_step:08d}.ckpt"
            trainer.save_checkpoint(path, weights_only=False)  # the full state, to resume from
            where = f"saved to {path}"
        raise NonFiniteTraining(
            f"{self.in_a_row} training steps in a row had non-finite gradients (steps "
            f"{self.first_bad_step}-{trainer.global_step - 1}; trainer.max_bad_steps={self.max_bad_steps}): "
            f"stopped. The weights are those from before step {self.first_bad_step}, {where}. "
            "Lower the learning rate or check the data"
        )
