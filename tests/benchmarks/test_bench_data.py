"""benchmarks/bench_data.py on a tiny set: both loops read every JPEG of the shards it writes."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path


def test_bench_data_times_both_loops_over_the_same_images(tmp_path, load_benchmark, squares_clock):
    bench = load_benchmark("bench_data")
    clock = squares_clock(bench)
    out = tmp_path / "bench.json"
    args = ["--root", str(tmp_path / "jpeg"), "--images", "20", "--per-shard", "5", "--resolutions", "32"]
    rows = bench.main([*args, "--workers", "0", "--batch-size", "4", "--repeats", "2", "--out", str(out)])
    assert [(r["resolution"], r["jpeg_draft"]) for r in rows] == [(32, True), (32, False)]
    assert all(r["bare_images"] == 20 and r["pipeline_images"] == 20 for r in rows)
    assert len(list((tmp_path / "jpeg").glob("*.tar"))) == 4
    # One clock reading before and after each pass over the 20 images, each loader's first pass
    # untimed: the clock's passes 0-2 (1, 5, 9 s) are simplejpeg's (best: 20 images in 5 s); then per
    # row, bare and pipeline alternate: untimed 13 and 17 s, round 1 21 and 25 s, round 2 29 and 33 s
    # (row 2: 37 ... 57 s). A rate is images / seconds, so pipeline / bare = bare s / pipeline s.
    assert clock.calls == (3 + 6 + 6) * 2
    rates = [(r["bare_images_per_s"], r["pipeline_images_per_s"]) for r in rows]  # the faster round's
    assert rates == [(round(20 / 21, 1), round(20 / 25, 1)), (round(20 / 45, 1), round(20 / 49, 1))]
    assert [r["ratio"] for r in rows] == [round(21 / 25, 3), round(45 / 49, 3)]
    median_ratios = [((21 / 25 + 29 / 33) / 2), ((45 / 49 + 53 / 57) / 2)]  # each round's own ratio
    assert [r["median_round_ratio"] for r in rows] == [round(r, 3) for r in median_ratios]
    written = json.loads(out.read_text())
    assert written["rows"] == rows and written["bare_simplejpeg"] == {"0": 20 / 5}


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


def test_jpeg_shards_are_reused_while_the_manifest_matches(tmp_path, load_benchmark):
    bench = load_benchmark("bench_data")
    urls = bench.write_jpeg_shards(tmp_path, 5, 2, seed=1)
    assert [url.rsplit("/", 1)[-1] for url in urls] == ["000000.tar", "000001.tar", "000002.tar"]
    first, mtimes = read_jpegs(urls[0]), [Path(url).stat().st_mtime_ns for url in urls]
    assert bench.write_jpeg_shards(tmp_path, 5, 2, seed=1) == urls
    assert [Path(url).stat().st_mtime_ns for url in urls] == mtimes  # not written again
    assert bench.write_jpeg_shards(tmp_path, 5, 2, seed=2) == urls
    assert read_jpegs(urls[0]) != first  # another seed: another set
