"""ldm/benchmark/data.py: batches taken one per round, new passes started, batches/s from the clock."""

from __future__ import annotations

import pytest

from ldm.benchmark import timing
from ldm.benchmark.data import NextBatch, measure_data


class ThreeBatches:
    """A loader of batches 0, 1, 2 per pass that records each batch it gives."""

    def __init__(self) -> None:
        self.given: list[int] = []

    def __iter__(self):
        for i in range(3):
            self.given.append(i)
            yield i


def test_next_batch_starts_a_new_pass_when_one_ends():
    next_batch = NextBatch([["a"], ["b"]])
    assert [next_batch() for _ in range(5)] == [["a"], ["b"], ["a"], ["b"], ["a"]]
    with pytest.raises(ValueError, match="the data loader yields no batches"):
        NextBatch([])()


def test_rates_follow_the_median_batch(squares_clock):
    squares_clock(timing)
    loader = ThreeBatches()
    m = measure_data(loader, 8, rounds=3, warmup=2)
    assert loader.given == [0, 1, 2, 0, 1]  # 2 warm-up batches, 3 timed: a new pass after the third
    assert m.metrics["batch_seconds"].value == 5  # rounds of 1, 5 and 9 s on the squares clock
    assert m.metrics["batches_per_s"].value == 1 / 5 and m.metrics["images_per_s"].value == 8 / 5
    assert (m.part, m.batch_size, m.metrics["batches_per_s"].unit) == ("data", 8, "batches/s")
