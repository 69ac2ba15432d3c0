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


def test_implementations_agree_and_take_adams_constant_gradient_steps(tmp_path, load_benchmark):
    bench = load_benchmark("bench_optimizer")
    out = tmp_path / "optimizer.json"
    report = bench.main(["--steps", "3", "--out", str(out), "--", *TINY])
    assert json.loads(out.read_text()) == report
    results = report["results"]
    assert list(results) == ["loop", "foreach", "fused"]
    for name, r in results.items():
        assert len(r["seconds"]) == 3 and r["median_s"] > 0
        # A constant gradient g gives m_hat = g and v_hat = g^2 at every step, so each of the 4 steps
        # (one untimed) moves a weight by lr * |g| / (|g| + eps): 4e-3 where |g| >> eps.
        assert r["max_abs_change"] == pytest.approx(4e-3, rel=1e-4), name
        assert r["max_abs_difference_from_loop"] < 1e-6, name
    assert results["loop"]["max_abs_difference_from_loop"] == 0


def test_rejects_no_steps(load_benchmark):
    bench = load_benchmark("bench_optimizer")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        bench.time_adamw_steps([], 0, lr=1e-3, weight_decay=0.0)
