"""benchmarks/plot_throughput.py: the series read from bench reports, and the PNG."""

from __future__ import annotations

import json

import pytest


def measurement(part, case, batch, **metrics):
    return {"part": part, "case": case, "batch_size": batch, "metrics": metrics, "notes": ""}


def q(value, unit):
    return {"value": value, "unit": unit}


REPORT = {
    "device": {"type": "cpu", "name": "Some CPU"},
    "measurements": [
        measurement("peak", "matmul", None, flops_per_s=q(1e12, "FLOP/s")),
        measurement("train", "unet step", 4, samples_per_s=q(8.0, "samples/s")),
        measurement("train", "unet step", 1, samples_per_s=q(3.0, "samples/s")),
        measurement("sample", "ddim x10", 1, it_per_s=q(20.0, "it/s"), images_per_s=q(2.0, "images/s")),
        measurement("compare", "unet step", 1, ours=q(3.1, "samples/s"), theirs=q(2.5, "samples/s")),
        measurement("compare", "ddim x10", 1, ours=q(21.0, "it/s"), theirs=q(19.0, "it/s")),
        measurement("compare", "agreement (float32)", 2, unet=q(1e-7, "relative error")),
    ],
}


def test_series_are_the_throughputs_by_batch_size(load_benchmark):
    plot = load_benchmark("plot_throughput")
    assert plot.throughput_series(REPORT) == {
        ("train", "unet step"): [(1, 3.0), (4, 8.0)],
        ("sample", "ddim x10"): [(1, 2.0)],
        ("compare", "unet step, ours"): [(1, 3.1)],
        ("compare", "unet step, theirs"): [(1, 2.5)],
    }


def test_png_of_two_reports(tmp_path, load_benchmark):
    pytest.importorskip("matplotlib")
    plot = load_benchmark("plot_throughput")
    paths = []
    for name in ("a", "b"):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(REPORT))
    out = plot.main(
        [
            *map(str, paths),
            "--labels",
            "A",
            "B",
            "--parts",
            "train",
            "sample",
            "--out",
            str(tmp_path / "t.png"),
        ]
    )
    from PIL import Image

    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (
            2 * 5 * 120,
            4 * 120,
        )  # two 5 x 4 inch panels, 120 dpi
    with pytest.raises(SystemExit, match="2 reports but 1 labels"):
        plot.main([*map(str, paths), "--labels", "A"])
