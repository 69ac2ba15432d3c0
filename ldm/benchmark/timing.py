"""Timing: untimed warm-up runs, then rounds in which every case runs once, in turn; medians of the rounds.

Cases timed together alternate within each round (ours, theirs, ours, theirs, ...), so that a
machine whose speed drifts (a shared VM, a GPU warming up) slows them alike. On CUDA the device
is synchronised before and after each run, so a run's time is its kernels' time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch

CPU = torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(
    cases: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int,
    device: torch.device = CPU,
) -> dict[str, list[float]]:
    """Seconds of each case in each of `rounds` rounds, after `warmup` untimed runs of each case."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be at least 1 and warmup at least 0, got {rounds} and {warmup}")
    for _ in range(warmup):
        for run in cases.values():
            run()
    synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median(seconds: list[float]) -> float:
    """The median of a case's rounds."""
    return statistics.median(seconds)
