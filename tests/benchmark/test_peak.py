"""ldm/benchmark/peak.py: the peak matmul's FLOPs, counted by FlopCount, are 2 n^3; its rate, the clock's."""

from __future__ import annotations

import pytest
import torch

from ldm.benchmark import timing
from ldm.benchmark.peak import counted_matmul_flops, matmul_flops, measure_peak


@pytest.mark.parametrize("n", [1, 3, 17, 64])
def test_counted_matmul_flops_are_two_n_cubed(n):
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    assert counted_matmul_flops(a, b, out) == matmul_flops(n) == 2 * n**3
    assert torch.allclose(out, a @ b)  # the counted product is computed, not skipped


def test_peak_rate_is_the_flops_over_the_median_round(squares_clock):
    squares_clock(timing)
    m = measure_peak(torch.device("cpu"), torch.bfloat16, 32, rounds=3, warmup=1)
    assert m.part == "peak" and m.case == "matmul 32x32 bfloat16"
    assert m.metrics["flops"].value == 2 * 32**3 and m.metrics["flops"].unit == "FLOP"
    assert m.metrics["seconds"].value == 5  # rounds of 1, 5 and 9 s on the squares clock
    assert m.metrics["flops_per_s"].value == 2 * 32**3 / 5 and m.metrics["flops_per_s"].unit == "FLOP/s"


def test_size_is_checked():
    with pytest.raises(ValueError, match="size must be at least 1"):
        measure_peak(torch.device("cpu"), torch.float32, 0, rounds=1, warmup=0)
