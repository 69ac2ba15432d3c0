"""The data pipeline: batches per second of a loader (the training DataModule's, built by the caller).

A round takes the next batch; the warm-up batches start the workers and fill the shuffle buffer.
A loader that runs out starts a new pass (its start-up cost is then part of that round, as in training).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ldm.benchmark.memory import memory_metrics
from ldm.benchmark.report import Measurement, Quantity
from ldm.benchmark.timing import median, time_rounds


class NextBatch:
    """Calling it returns the loader's next batch, starting a new pass when one ends."""

    def __init__(self, loader: Iterable[Any]):
        self.loader = loader
        self._iterator: Iterator[Any] = iter(loader)

    def __call__(self) -> Any:
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.loader)
        try:
            return next(self._iterator)
        except StopIteration:
            raise ValueError("the data loader yields no batches") from None


def measure_data(loader: Iterable[Any], batch_size: int, *, rounds: int, warmup: int) -> Measurement:
    """Batches/s and images/s of `loader`, whose batches hold `batch_size` samples."""
    seconds = median(time_rounds({"batch": NextBatch(loader)}, rounds=rounds, warmup=warmup)["batch"])
    metrics = {
        "batches_per_s": Quantity(1 / seconds, "batches/s"),
        "images_per_s": Quantity(batch_size / seconds, "images/s"),
        "batch_seconds": Quantity(seconds, "s"),
        **memory_metrics(torch.device("cpu")),
    }
    return Measurement("data", "training loader", batch_size, metrics)
