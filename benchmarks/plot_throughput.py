"""Throughput against batch size from ``python -m ldm.bench`` reports: one PNG, one panel per part.

    python benchmarks/plot_throughput.py outputs/*/bench.json --out docs/throughput.png
    python benchmarks/plot_throughput.py cpu.json h200.json --labels CPU H200 --parts train sample

Each report adds a line per measured case (the training step, each sampler, encode and decode, the
data loader; with ``bench.compare=diffusers``, ours and theirs): samples (images) per second at each
batch size it measured, on log-log axes. Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

try:
    from benchmarks import figures  # the repository root on sys.path (tests)
except ImportError:
    import figures  # run as a script: benchmarks/ on sys.path

THROUGHPUT = {
    "train": "samples_per_s",
    "sample": "images_per_s",
    "autoencoder": "images_per_s",
    "data": "images_per_s",
}
"""The metric plotted for each part (samples or images per second)."""
COMPARED = ("ours", "theirs")
"""The metrics of a side-by-side case (``part`` compare), plotted as two lines."""


def throughput_series(report: dict) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """{(part, case label): [(batch size, samples/s), ...] sorted by batch size} of one report.

    Sampling comparisons are in it/s, not images/s: they are left out (the others are per sample).
    """
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for m in report["measurements"]:
        part, case, batch, metrics = m["part"], m["case"], m["batch_size"], m["metrics"]
        if part in THROUGHPUT and THROUGHPUT[part] in metrics:
            series[(part, case)].append((batch, metrics[THROUGHPUT[part]]["value"]))
        elif part == "compare" and "ours" in metrics and metrics["ours"]["unit"] in ("samples/s", "images/s"):
            for side in COMPARED:
                series[(part, f"{case}, {side}")].append((batch, metrics[side]["value"]))
    return {key: sorted(points) for key, points in series.items()}


def plot(reports: list[dict], labels: list[str], out: Path, parts: list[str] | None = None) -> Path:
    """Write the PNG: a panel per part, a line per (report, case); returns the path."""
    all_series = [throughput_series(report) for report in reports]
    shown = parts or sorted({part for series in all_series for part, _ in series})
    if not shown:
        raise ValueError("the reports hold no throughput measurements to plot")
    figure, axes = figures.panels(len(shown))
    for ax, part in zip(axes, shown):
        for label, series in zip(labels, all_series):
            for (p, case), points in series.items():
                if p == part:
                    batches, rates = zip(*points)
                    ax.plot(batches, rates, marker="o", label=f"{label}: {case}" if label else case)
        ax.set(title=part, xlabel="batch size", ylabel="samples/s", xscale="log", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    return figures.save_png(figure, out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    inputs_help = "bench.json files of python -m ldm.bench"
    p = figures.plot_parser(__doc__, "reports", inputs_help, "their device names", "throughput.png")
    p.add_argument("--parts", nargs="+", default=None, help="parts to plot (default: all that were measured)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    reports = [json.loads(path.read_text()) for path in args.reports]
    devices = [report["device"]["name"] for report in reports]
    labels = figures.check_labels(args.labels or devices, len(reports), "reports")
    return plot(reports, labels, args.out, args.parts)


if __name__ == "__main__":
    main()
