"""scripts/bench_data.py on a tiny set: both loops read every JPEG of the shards it writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_data.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_data_times_both_loops_over_the_same_images(tmp_path):
    bench = load_script()
    out = tmp_path / "bench.json"
    args = ["--root", str(tmp_path / "jpeg"), "--images", "20", "--per-shard", "5", "--resolutions", "32"]
    rows = bench.main([*args, "--workers", "0", "--batch-size", "4", "--repeats", "1", "--out", str(out)])
    assert [(r["resolution"], r["jpeg_draft"]) for r in rows] == [(32, True), (32, False)]
    assert all(r["bare_images"] == 20 and r["pipeline_images"] == 20 for r in rows)
    assert all(abs(r["ratio"] - r["pipeline_images_per_s"] / r["bare_images_per_s"]) < 0.01 for r in rows)
    assert len(list((tmp_path / "jpeg").glob("*.tar"))) == 4
    assert json.loads(out.read_text())["rows"] == rows
