"""A run's checkpoints: every N steps, every T minutes and on a stop signal, the last K kept.

Each is written at the end of a training step (never inside a signal handler) as
``<stage dir>/checkpoints/step-NNNNNNNN.ckpt`` through the trainer (so every rank takes part and
the file appears atomically: ``StreamingCheckpointIO``), and ``last.ckpt`` beside it is replaced
by a hard link to it (a copy where the file system has no links). The time trigger is rank 0's
clock and the signal flag any rank's: one all-reduce per step makes every rank agree. After a
signal's checkpoint the fit stops by raising ``Preempted``. :func:`newest_checkpoint` is what
``resume=auto`` continues from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from ldm.training.preemption import STOP, Preempted, StopFlag

log = logging.getLogger(__name__)

LAST = "last.ckpt"
STAGE_DIRS = ("checkpoints", "autoencoder/checkpoints")
"""Where ``python -m ldm.train`` keeps each stage's checkpoints in a run directory, later stage first."""


def any_rank(trainer: pl.Trainer, flags: list[bool]) -> list[bool]:
    """Each flag set on any rank (one all-reduce; no communication in a single process)."""
    if trainer.world_size == 1:
        return list(flags)
    local = torch.tensor([float(f) for f in flags], device=trainer.strategy.root_device)
    return [bool(v > 0) for v in trainer.strategy.reduce(local, reduce_op="sum")]


def replace_with_link(source: Path, target: Path) -> None:
    """Atomically make `target` a hard link to `source` (a copy where links are not supported)."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def newest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The newest complete checkpoint of a run directory: stage 2's if it has any, else stage 1's."""
    for folder in STAGE_DIRS:
        files = [p for p in (Path(run_dir) / folder).glob("*.ckpt") if not p.name.startswith(".")]
        if files:
            return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name == LAST))
    return None


class RunCheckpoints(pl.Callback):
    """Writes checkpoints every `every_n_steps` steps, every `every_n_minutes` minutes (None: never)
    and when a stop signal arrives; keeps the newest `keep_last` step files and ``last.ckpt``."""

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: int,
        every_n_minutes: Optional[float] = None,
        keep_last: int = 1,
        stop: StopFlag = STOP,
    ):
        if every_n_steps < 1:
            raise ValueError(f"checkpoint interval must be >= 1 step, got {every_n_steps}")
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        if every_n_minutes is not None and not every_n_minutes > 0:
            raise ValueError(f"checkpoint interval must be > 0 minutes, got {every_n_minutes}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.every_n_minutes = every_n_minutes
        self.keep_last = keep_last
        self.stop = stop
        self._last_save = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning's own signal handlers (registered when the fit starts): ours replace them.
        self.stop.install()
        self._last_save = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        due = step % self.every_n_steps == 0
        timed = (
            self.every_n_minutes is not None
            and trainer.is_global_zero
            and time.monotonic() - self._last_save >= 60 * self.every_n_minutes
        )
        signalled, timed = any_rank(trainer, [self.stop.signum is not None, timed])
        if not (due or timed or signalled):
            return
        path = self.save(trainer)
        if signalled:
            signum = self.stop.signum or signal.SIGTERM  # the signal may have reached another rank
            raise Preempted(signum, str(path), step)

    def save(self, trainer: pl.Trainer) -> Path:
        """Write the step's checkpoint (every rank calls this), link last.ckpt to it, drop old ones."""
        path = self.dirpath / f"step-{trainer.global_step:08d}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # the full state, to resume from
        self._last_save = time.monotonic()
        if trainer.is_global_zero:
            replace_with_link(path, self.dirpath / LAST)
            for old in sorted(self.dirpath.glob("step-*.ckpt"))[: -self.keep_last]:
                old.unlink(missing_ok=True)
            log.info("checkpoint at step %d: %s", trainer.global_step, path)
        return path
