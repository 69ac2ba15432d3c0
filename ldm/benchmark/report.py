"""What a benchmark run reports: numbers with units, the machine and versions, the JSON and the table."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the ``ldm`` package: a git checkout's root when run from one."""


@dataclass
class Quantity:
    """A number and its unit."""

    value: float
    unit: str


@dataclass
class Measurement:
    """One measured case: what part (train, sample, ...), which case, at which batch size, its numbers."""

    part: str
    case: str
    batch_size: Optional[int]
    metrics: dict[str, Quantity] = field(default_factory=dict)
    notes: str = ""


def package_version(name: str) -> Optional[str]:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(root: Path = PACKAGE_ROOT) -> Optional[str]:
    """The commit checked out at `root` when `root` is a git checkout's top level, else None."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = top.stdout.split()
    if top.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root.resolve():
        return None  # not a checkout, or the package lies inside another project's checkout
    return lines[1]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def metadata(device: torch.device) -> dict[str, Any]:
    """The machine, versions, commit and date of a run."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": {"type": device.type, "name": device_name(device)},
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "versions": {
            "ldm": package_version("ldm"),
            "torch": torch.__version__,
            "diffusers": package_version("diffusers"),
            "python": platform.python_version(),
        },
        "git_commit": git_commit(),
    }


def report_dict(
    meta: dict[str, Any], config: dict[str, Any], settings: dict[str, Any], measurements: list[Measurement]
) -> dict[str, Any]:
    """The JSON report: metadata, the composed config, the resolved settings and every measurement."""
    return {
        **meta,
        "config": config,
        "settings": settings,
        "measurements": [dataclasses.asdict(m) for m in measurements],
    }


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as indented JSON (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def format_metrics(metrics: dict[str, dict[str, Any]]) -> str:
    """``name value unit`` of each metric (4 significant digits), comma-separated."""
    return ", ".join(f"{name} {q['value']:.4g} {q['unit']}" for name, q in metrics.items())


def format_table(measurements: list[dict[str, Any]]) -> str:
    """A plain-text table of a report's measurements (dicts, as in the JSON), one row each."""
    rows = [("part", "case", "batch", "numbers")]
    for m in measurements:
        batch = "" if m["batch_size"] is None else str(m["batch_size"])
        rows.append((m["part"], m["case"], batch, format_metrics(m["metrics"])))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [" | ".join([*(row[i].ljust(widths[i]) for i in range(3)), row[3]]) for row in rows]
    lines.insert(1, "-+-".join([*("-" * w for w in widths), "-" * 7]))
    return "\n".join(lines)
