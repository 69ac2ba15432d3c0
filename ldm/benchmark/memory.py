"""Peak memory: the process's resident set and, on CUDA, the tensors' peak allocation.

On Linux the peak resident set is the kernel's high-water mark of this process's memory
(``VmHWM`` in /proc/self/status). ``resource``'s ``ru_maxrss`` is the same counter but carried over
``execve``: a command started from a larger process (a test run, a notebook) would report its
parent's peak. Elsewhere ``ru_maxrss`` is what there is.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

from ldm.benchmark.report import Quantity

PROC_STATUS = Path("/proc/self/status")


def peak_rss_bytes() -> int:
    """The largest resident set size of this process so far, in bytes."""
    if PROC_STATUS.is_file():
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, others KiB


def reset_device_peak(device: torch.device) -> None:
    """Start a new CUDA peak (nothing to do on the CPU, whose RSS peak cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_metrics(device: torch.device) -> dict[str, Quantity]:
    """The process's peak RSS so far and, on CUDA, the peak allocated since the last reset."""
    metrics = {"peak_rss": Quantity(peak_rss_bytes(), "B")}
    if device.type == "cuda":
        metrics["cuda_max_allocated"] = Quantity(torch.cuda.max_memory_allocated(device), "B")
    return metrics
