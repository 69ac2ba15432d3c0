"""benchmarks/plot_sampler_scores.py: the series read from bench_samplers.py rows, and the PNG."""

from __future__ import annotations

import json

import pytest


def row(sampler, schedule, steps, calls, color, shape):
    return {
        "sampler": sampler,
        "schedule": schedule,
        "steps": steps,
        "model_calls": calls,
        "color_accuracy": color,
        "shape_accuracy": shape,
        "n": 144,
        "wall_s": 1.5,
        "cpu_s": 3.0,
        "load_1min": 0.5,
    }


# Accuracies are multiples of 1/8, so that their percentages are exact; rows out of step order.
ROWS = [
    row("ddim", "uniform", 20, 20, 0.875, 0.75),
    row("ddim", "uniform", 10, 10, 0.625, 0.5),
    row("heun", "karras", 10, 19, 0.75, 0.875),
    row("heun", "karras", 5, 9, 0.5, 0.625),
    row("dpmpp_2m", "karras", 10, 10, 0.875, 1.0),
    row("dpmpp_2m", "uniform", 10, 10, 0.5, 0.75),
    row("dpmpp_2m", "karras", 20, 20, 1.0, 1.0),
]


def test_series_are_the_accuracies_by_steps(load_benchmark):
    plot = load_benchmark("plot_sampler_scores")
    assert plot.score_series(ROWS, "color_accuracy") == {
        "ddim": [(10, 62.5), (20, 87.5)],
        "heun": [(5, 50.0), (10, 75.0)],
        "dpmpp_2m (karras)": [(10, 87.5), (20, 100.0)],  # two schedules of one sampler: named
        "dpmpp_2m (uniform)": [(10, 50.0)],
    }
    assert plot.score_series(ROWS, "shape_accuracy", x="calls") == {
        "ddim": [(10, 50.0), (20, 75.0)],
        "heun": [(9, 62.5), (19, 87.5)],  # Heun: 2 calls a step, 1 on the last
        "dpmpp_2m (karras)": [(10, 100.0), (20, 100.0)],
        "dpmpp_2m (uniform)": [(10, 75.0)],
    }
    with pytest.raises(ValueError, match="x must be one of"):
        plot.score_series(ROWS, "color_accuracy", x="wall_s")


def test_ticks_are_the_measured_values_that_do_not_crowd(load_benchmark):
    plot = load_benchmark("plot_sampler_scores")
    assert plot.spaced_ticks({50, 10, 20}) == [10, 20, 50]
    # 10 to 99: one decade, so ticks at least 0.06 decades (a factor 1.148) apart; 20/19 is 1.053.
    assert plot.spaced_ticks({10, 19, 20, 39, 50, 99}) == [10, 19, 39, 50, 99]
    # 1 to 1000: three decades, a factor 10 ** 0.18 = 1.51 apart; 5/4 = 100/80 = 1.25, 1000/700 = 1.43.
    assert plot.spaced_ticks({1, 2, 4, 5, 80, 100, 700, 1000}) == [1, 2, 4, 80, 700]
    assert plot.spaced_ticks({7}) == [7]


def test_png_of_two_files(tmp_path, load_benchmark):
    pytest.importorskip("matplotlib")
    plot = load_benchmark("plot_sampler_scores")
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        path.write_text(json.dumps({"meta": {"device": "cpu"}, "rows": ROWS}))
    for x in ("steps", "calls"):
        out = plot.main([*map(str, paths), "--x", x, "--out", str(tmp_path / x / "s.png")])
        assert out == tmp_path / x / "s.png"
        from PIL import Image

        with Image.open(out) as image:
            assert image.format == "PNG" and image.size == (2 * 5 * 120, 4 * 120)  # two 5 x 4 inch panels
            assert len(image.convert("RGB").getcolors(maxcolors=2**16)) > 100  # lines, text: not blank
    with pytest.raises(SystemExit, match="2 files but 1 labels"):
        plot.main([*map(str, paths), "--labels", "A"])


def test_a_file_without_rows_is_an_error(tmp_path, load_benchmark):
    plot = load_benchmark("plot_sampler_scores")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"meta": {"device": "cpu"}, "rows": []}))
    with pytest.raises(ValueError, match=r"empty\.json holds no rows"):
        plot.main([str(empty), "--out", str(tmp_path / "s.png")])
    assert not (tmp_path / "s.png").exists()
