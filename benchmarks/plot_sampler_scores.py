"""Shapes-evaluator accuracy against sampler steps from ``benchmarks/bench_samplers.py --out`` files.

    python benchmarks/plot_sampler_scores.py bench.json --out sampler_scores.png
    python benchmarks/plot_sampler_scores.py karras.json uniform.json --x calls --out scores.png

One PNG with two panels, color accuracy and shape accuracy (%), against the step count (log axis,
ticks at the measured counts) or, with ``--x calls``, against model calls (denoiser evaluations per
image). A line per sampler of each file, named ``sampler (schedule)`` where a file holds one sampler
with several sigma schedules, and prefixed with the file's label when there are several files.
Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

try:
    from benchmarks import figures  # the repository root on sys.path (tests)
except ImportError:
    import figures  # run as a script: benchmarks/ on sys.path

X_AXES = {"steps": ("steps", "sampler steps"), "calls": ("model_calls", "model calls per image")}
"""--x: (row key, axis label)."""
ACCURACIES = {"color_accuracy": "color accuracy", "shape_accuracy": "shape accuracy"}
"""The panels: row key -> title."""


def load_rows(path: Path) -> list[dict]:
    """The rows of one bench_samplers.py JSON file; an error if it holds none."""
    rows = json.loads(Path(path).read_text()).get("rows")
    if not rows:
        raise ValueError(f"{path} holds no rows (write them with benchmarks/bench_samplers.py --out)")
    return rows


def score_series(rows: list[dict], accuracy: str, x: str = "steps") -> dict[str, list[tuple[int, float]]]:
    """{sampler label: [(steps or model calls, accuracy in %), ...] sorted by steps} of one file's rows.

    The label is the sampler's name, with its sigma schedule in brackets where the rows hold that
    sampler with more than one schedule.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {sorted(X_AXES)}, not {x!r}")
    schedules = defaultdict(set)
    for row in rows:
        schedules[row["sampler"]].add(row["schedule"])
    series: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for row in rows:
        name = row["sampler"]
        label = f"{name} ({row['schedule']})" if len(schedules[name]) > 1 else name
        series[label].append((row["steps"], row[X_AXES[x][0]], 100 * row[accuracy]))
    return {label: [(at, y) for _, at, y in sorted(points)] for label, points in series.items()}


def spaced_ticks(values: set[int], gap: float = 0.06) -> list[int]:
    """The measured x values, smallest first, less any closer than ``gap`` of the log axis to a kept one.

    Steps are usually far apart; model calls are not (Heun's 19 next to DDIM's 20), and their labels
    would overlap.
    """
    ticks = sorted(values)
    min_gap = gap * max(math.log10(ticks[-1] / ticks[0]), 1.0)  # in decades; at least gap of one
    kept = ticks[:1]
    for t in ticks[1:]:
        if math.log10(t / kept[-1]) >= min_gap:
            kept.append(t)
    return kept


def plot(files: list[list[dict]], labels: list[str], out: Path, x: str = "steps") -> Path:
    """Write the PNG: a panel per accuracy, a line per (file, sampler); returns the path."""
    figure, axes = figures.panels(len(ACCURACIES))
    for ax, (accuracy, title) in zip(axes, ACCURACIES.items()):
        measured = set()
        for label, rows in zip(labels, files):
            for sampler, points in score_series(rows, accuracy, x).items():
                xs, ys = zip(*points)
                measured.update(xs)
                ax.plot(xs, ys, marker="o", clip_on=False, label=f"{label}: {sampler}" if label else sampler)
        ax.set(title=title, xlabel=X_AXES[x][1], ylabel="%", xscale="log", ylim=(0, 100))
        ticks = spaced_ticks(measured)
        ax.set_xticks(ticks, labels=[str(t) for t in ticks])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return figures.save_png(figure, out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    inputs_help = "JSON files of benchmarks/bench_samplers.py --out"
    p = figures.plot_parser(__doc__, "files", inputs_help, "file names", "sampler_scores.png")
    p.add_argument("--x", choices=sorted(X_AXES), default="steps", help="sampler steps or model calls")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    files = [load_rows(path) for path in args.files]
    names = [""] if len(files) == 1 else [path.stem for path in args.files]  # no prefix for one file
    labels = figures.check_labels(args.labels or names, len(files), "files")
    return plot(files, labels, args.out, args.x)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
