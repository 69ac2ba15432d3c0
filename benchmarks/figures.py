"""What the benchmarks' plots share: their command line, and side-by-side panels on matplotlib's Agg
backend, saved as a PNG.

Needs matplotlib (the ``bench`` extra); it is imported on first use, so the scripts' other functions
run without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def plot_parser(
    description: str, inputs: str, inputs_help: str, labels_help: str, out: str
) -> argparse.ArgumentParser:
    """The plots' command line: the JSON files (positional ``inputs``), --labels (one per file), --out."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(inputs, nargs="+", type=Path, help=inputs_help)
    p.add_argument("--labels", nargs="+", default=None, help=f"one per file (default: {labels_help})")
    p.add_argument("--out", type=Path, default=Path(out), help="the PNG")
    return p


def check_labels(labels: list[str], n_files: int, files: str) -> list[str]:
    """``labels`` if there is one per file, else exit with an error naming the ``files``."""
    if len(labels) != n_files:
        raise SystemExit(f"error: {n_files} {files} but {len(labels)} labels")
    return labels


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (writes files, needs no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panels(n: int, width: float = 5, height: float = 4) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels in a row, each ``width`` x ``height`` inches: (figure, axes)."""
    figure, axes = pyplot().subplots(1, n, figsize=(width * n, height), squeeze=False)
    return figure, list(axes[0])


def save_png(figure: Any, out: Path, dpi: int = 120) -> Path:
    """Lay the figure out, write it to ``out`` (making its folder) and close it; returns ``out``."""
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=dpi)
    pyplot().close(figure)
    return out
