"""benchmarks/bench_optimizer.py: the three AdamW implementations take the same steps."""

from __future__ import annotations

import json

import pytest

TINY = [
    "experiment=shapes",
    "denoiser.model_channels=32",
    "denoiser.num_head_channels=16",
    "diffusion.learning_rate=1e-3",
    "diffusion.weight_decay=0",
]


def test_implementations_agree_and_take_adams_constant_gradient_steps(
    tmp_path, load_benchmark, squares_clock
):
    bench = load_benchmark("bench_optimizer")
    clock = squares_clock(bench)
    out = tmp_path / "optimizer.json"
    report = bench.main(["--steps", "3", "--out", str(out), "--", *TINY])
    assert json.loads(out.read_text()) == report
    results = report["results"]
    assert list(results) == ["loop", "foreach", "fused"]
    # Only the 3 steps after the untimed one are timed, one clock reading before and after each: the
    # clock's runs 0-2 (1, 5, 9 s) are the loop's, 3-5 foreach's, 6-8 fused's; each median the middle.
    assert clock.calls == 3 * 3 * 2
    assert [r["seconds"] for r in results.values()] == [[1, 5, 9], [13, 17, 21], [25, 29, 33]]
    assert [r["median_s"] for r in results.values()] == [5, 17, 29]
    for name, r in results.items():
        # A constant gradient g gives m_hat = g and v_hat = g^2 at every step, so each of the 4 steps
        # (one untimed) moves a weight by lr * |g| / (|g| + eps): 4e-3 where |g| >> eps.
        assert r["max_abs_change"] == pytest.approx(4e-3, rel=1e-4), name
        assert r["max_abs_difference_from_loop"] < 1e-6, name
    assert results["loop"]["max_abs_difference_from_loop"] == 0


def test_rejects_no_steps(load_benchmark):
    bench = load_benchmark("bench_optimizer")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        bench.time_adamw_steps([], 0, lr=1e-3, weight_decay=0.0)
