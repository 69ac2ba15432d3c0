"""benchmarks/bench_data.py on a tiny set: both loops read every JPEG of the shards it writes."""

from __future__ import annotations

import json
import tarfile


def test_bench_data_times_both_loops_over_the_same_images(tmp_path, load_benchmark):
    bench = load_benchmark("bench_data")
    out = tmp_path / "bench.json"
    args = ["--root", str(tmp_path / "jpeg"), "--images", "20", "--per-shard", "5", "--resolutions", "32"]
    rows = bench.main([*args, "--workers", "0", "--batch-size", "4", "--repeats", "1", "--out", str(out)])
    assert [(r["resolution"], r["jpeg_draft"]) for r in rows] == [(32, True), (32, False)]
    assert all(r["bare_images"] == 20 and r["pipeline_images"] == 20 for r in rows)
    assert all(abs(r["ratio"] - r["pipeline_images_per_s"] / r["bare_images_per_s"]) < 0.01 for r in rows)
    assert all(r["median_round_ratio"] > 0 for r in rows)
    assert len(list((tmp_path / "jpeg").glob("*.tar"))) == 4
    written = json.loads(out.read_text())
    assert written["rows"] == rows and written["bare_simplejpeg"]["0"] > 0


def test_median_ratio_pairs_the_rounds(load_benchmark):
    bench = load_benchmark("bench_data")
    pipeline = [(80.0, 10), (45.0, 10), (55.0, 10)]
    bare = [(100.0, 10), (50.0, 10), (50.0, 10)]  # the machine slowed down after round 1
    assert bench.best(pipeline) == (80.0, 10)
    assert abs(bench.median_ratio(pipeline, bare) - 0.9) < 1e-12  # rounds: 0.8, 0.9, 1.1
    assert abs(bench.best(pipeline)[0] / bench.best(bare)[0] - 0.8) < 1e-12


def test_both_bare_decoders_read_the_same_sizes(tmp_path, load_benchmark):
    bench = load_benchmark("bench_data")
    (url,) = bench.write_jpeg_shards(tmp_path, 3, 3, seed=1)
    jpegs = read_jpegs(url)
    sizes = {name: [decode(data) for data in jpegs] for name, decode in bench.BARE_DECODERS.items()}
    assert len(jpegs) == 3 and sizes["pil"] == sizes["simplejpeg"]
    assert all(min(size) >= 256 for size in sizes["pil"])  # (width, height), short side 256-768


def read_jpegs(url: str) -> list[bytes]:
    with tarfile.open(url) as tar:
        return [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
