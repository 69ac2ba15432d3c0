"""Randomness of a training step as a function of (seed, global step, rank), so that resuming is exact.

The per-sample draws of a training step (the posterior sample, caption dropout, timesteps and
noise) come from one generator per sample, seeded by (seed, step, micro-batch, global sample
index): ``sample_generators``. Anything else a step draws from torch's, NumPy's and Python's global
generators (dropout layers) comes from generators seeded at the start of each step with a hash of
the run's seed, the global step and the rank: ``StepSeed``.
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

from ldm.samplers.noise import per_sample_generators


def step_seed(seed: int, *key: int) -> int:
    """A 63-bit seed mixed from (seed, *key) by NumPy's SeedSequence (neighbouring keys are unrelated)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, *key]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def sample_generators(
    trainer: pl.Trainer, seed: int, batch_size: int, batch_idx: int, device: torch.device
) -> list[torch.Generator]:
    """One generator per sample of this rank's batch, seeded by (seed, step, micro-batch, global sample
    index): a sample's draws do not depend on the number of ranks it was split over."""
    micro = batch_idx % max(1, trainer.accumulate_grad_batches)
    first = trainer.global_rank * batch_size
    seeds = [step_seed(seed, trainer.global_step, micro, first + j) for j in range(batch_size)]
    return per_sample_generators(seeds, device)


class StepSeed(pl.Callback):
    """Seeds torch (CPU and CUDA), NumPy and Python's ``random`` at the start of every training batch."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        seed = step_seed(self.seed, trainer.global_step, trainer.global_rank)
        torch.manual_seed(seed)  # every CUDA device too
        np.random.seed(seed & 0xFFFFFFFF)
        random.seed(seed)
