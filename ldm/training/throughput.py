"""Training throughput: batches, samples and FLOPs per second, and MFU where the device's peak is known.

Lightning's ``ThroughputMonitor`` does the timing: rolling averages over the last ``window``
training batches (data loading included, validation left out), logged as
``train/device/batches_per_sec``, ``train/device/samples_per_sec`` and, given a FLOP count,
``train/device/flops_per_sec`` and ``train/device/mfu`` (multi-GPU runs add the global rates).
The FLOPs of a step are counted once, on the first training batch, with torch's FLOP formulas
(``torch.utils.flop_counter``): the matrix products, convolutions and attention of every forward
and backward pass in the step (the frozen encoders' too), which is what MFU is defined on;
element-wise work and the optimizer update are not counted (``ldm.flops.FlopCount``, which also
counts CPU flash attention and runs every op unchanged). MFU needs the
device's peak rate, which Lightning knows for the common NVIDIA GPUs; on a CPU the FLOP rate is
logged without it.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ThroughputMonitor
from pytorch_lightning.trainer.states import RunningStage

from ldm.flops import FlopCount

log = logging.getLogger(__name__)

BATCH_KEYS = ("image", "moments")
"""Batch entries whose first dimension is the batch size (images, or cached latent moments)."""


def batch_size_of(batch: dict[str, Any]) -> int:
    """The number of samples in a training batch."""
    for key in BATCH_KEYS:
        if key in batch:
            return len(batch[key])
    raise ValueError(f"a batch needs one of {', '.join(BATCH_KEYS)}; it has {', '.join(batch)}")


class StepFlops(pl.Callback):
    """Counts the FLOPs of one training step on the first batch; sets ``pl_module.flops_per_batch``.

    ``ThroughputMonitor`` reads that attribute after every batch. During validation it is None,
    since a validation batch does other work than a training step.
    """

    def __init__(self) -> None:
        self.flops: Optional[int] = None
        self._counter: Optional[FlopCount] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.flops_per_batch = self.flops

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.flops is None and self._counter is None:
            self._counter = FlopCount()
            self._counter.__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._counter is not None:
            self._stop()
            log.info("one training step: %.4g GFLOP (matmuls, convolutions, attention)", self.flops / 1e9)
        pl_module.flops_per_batch = self.flops

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.flops_per_batch = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.flops_per_batch = self.flops

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._counter is not None:
            self._stop()

    def _stop(self) -> None:
        self._counter.__exit__(None, None, None)
        self.flops = self._counter.total
        self._counter = None


class TrainingThroughputMonitor(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor``, logging the training throughput only.

    Lightning also logs ``validate/*`` rates at a step that counts validation batches, which runs
    back against the training steps (rows out of order in metrics.csv, points at the wrong place in
    charts against the global step). Validation batches are still timed, so that the training rate
    leaves out the time spent validating; only their logging is dropped.
    """

    def _compute(self, trainer: pl.Trainer, iter_num: Optional[int] = None) -> None:
        if trainer.state.stage == RunningStage.VALIDATING:
            return
        super()._compute(trainer, iter_num)


def check_window(window: int) -> None:
    """Raise unless ``window`` is 0 (no throughput logging) or at least 2 batches."""
    if window != 0 and window < 2:
        raise ValueError(f"trainer.throughput_window must be 0 (off) or at least 2 batches, got {window}")


def throughput_callbacks(window: int) -> list[pl.Callback]:
    """The callbacks that log training throughput over a rolling ``window`` of batches (0: none)."""
    check_window(window)
    if window == 0:
        return []
    return [StepFlops(), TrainingThroughputMonitor(batch_size_of, window_size=window, separator="/")]
