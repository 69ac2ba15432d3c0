"""The device's peak FLOP rate, measured in the run: an n x n matmul in the compute dtype.

MFU (Chowdhery et al. 2022, App. B) is the model's FLOPs per second over the hardware's peak. A
datasheet peak is not known for every device (a CPU, a clocked-down GPU), so the peak here is the
rate of a large matrix product in the same dtype on the same device, counted by
``ldm.flops.FlopCount`` (2 n^3 FLOPs) and timed like every other case.
"""

from __future__ import annotations

import torch

from ldm.benchmark.report import Measurement, Quantity
from ldm.benchmark.timing import median, time_rounds
from ldm.flops import FlopCount


def matmul_flops(n: int) -> int:
    """FLOPs of an n x n by n x n matrix product: n^2 outputs of n multiply-adds, 2 FLOPs each."""
    return 2 * n**3


def counted_matmul_flops(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> int:
    """The FLOPs that FlopCount counts for ``torch.mm(a, b, out=out)`` (it runs the product once)."""
    with FlopCount() as counter:
        torch.mm(a, b, out=out)
    return counter.total


def measure_peak(
    device: torch.device, dtype: torch.dtype, size: int, *, rounds: int, warmup: int
) -> Measurement:
    """The FLOP/s of an n x n matmul in `dtype` on `device` (the median round)."""
    if size < 1:
        raise ValueError(f"the peak matmul's size must be at least 1, got {size}")
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, device=device, generator=generator).to(dtype) for _ in range(2))
    out = torch.empty(size, size, device=device, dtype=dtype)
    flops = counted_matmul_flops(a, b, out)
    seconds = median(
        time_rounds({"matmul": lambda: torch.mm(a, b, out=out)}, rounds=rounds, warmup=warmup, device=device)[
            "matmul"
        ]
    )
    return Measurement(
        "peak",
        f"matmul {size}x{size} {str(dtype).removeprefix('torch.')}",
        None,
        {
            "flops": Quantity(flops, "FLOP"),
            "seconds": Quantity(seconds, "s"),
            "flops_per_s": Quantity(flops / seconds, "FLOP/s"),
        },
    )
