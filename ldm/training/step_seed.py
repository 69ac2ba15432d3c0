"""Randomness of a training step as a function of (seed, global step, rank), so that resuming is exact.

Everything a training step draws from torch's, NumPy's and Python's global generators (the
posterior sample, caption dropout, timesteps and noise, dropout layers) comes from generators
seeded at the start of each step with a hash of the run's seed, the global step and the rank.
A run resumed from its step-N checkpoint therefore draws, from step N + 1 on, exactly what the
uninterrupted run drew, without any generator state in the checkpoint. Data augmentation is
seeded per sample in the data pipeline (``ldm.data.decode``), validation per batch, sample grids
per image, so none of them depends on the global generators either.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed mixed from (seed, step, rank) by NumPy's SeedSequence (neighbouring steps are unrelated)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, step, rank]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class StepSeed(pl.Callback):
    """Seeds torch (CPU and CUDA), NumPy and Python's ``random`` at the start of every training batch."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        seed = step_seed(self.seed, trainer.global_step, trainer.global_rank)
        torch.manual_seed(seed)  # every CUDA device too
        np.random.seed(seed & 0xFFFFFFFF)
        random.seed(seed)
