"""``python -m ldm.bench`` end to end through the real command line, on the debug preset (CPU, 32 px)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from hydra.errors import ConfigCompositionException

from ldm.benchmark.networks import build_networks
from ldm.config import BenchRunConfig
from ldm.flops import FlopCount
from ldm.training.bench import run
from ldm.training.config_store import compose_config
from tests.conftest import ROOT, run_cli

TINY = [
    "experiment=debug",
    "bench.device=cpu",
    "bench.resolution=32",
    "bench.batch_sizes=[2]",
    "bench.rounds=1",
    "bench.warmup=0",
    "bench.peak_size=64",
    "bench.sample_steps=2",
    "trainer.enable_progress_bar=false",
]


def bench(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    args = ["-m", "ldm.bench", *TINY, f"hydra.run.dir={tmp_path / 'run'}", f"data.root={tmp_path / 'data'}"]
    return run_cli([*args, *overrides])


def by_case(report: dict) -> dict[tuple[str, str], dict]:
    return {(m["part"], m["case"]): m for m in report["measurements"]}


def test_cli_measures_every_part_and_writes_the_report(tmp_path):
    result = bench(tmp_path, "bench.samplers=[ddim,heun]")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert set(report) == {
        "date", "device", "cpus", "threads", "versions", "git_commit", "config", "settings", "measurements",
    }  # fmt: skip
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert set(report["versions"]) == {"ldm", "torch", "diffusers", "python"}
    assert report["versions"]["torch"] == torch.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert report["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert (
        report["config"]["bench"]["batch_sizes"] == [2]
        and report["config"]["denoiser"]["model_channels"] == 32
    )
    assert report["settings"]["parts"] == ["train", "sample", "autoencoder", "data"]
    cases = by_case(report)
    assert set(cases) == {
        ("peak", "matmul 64x64 float32"),
        ("train", "unet step"),
        ("sample", "ddim x2, guidance 5"),
        ("sample", "heun x2, guidance 5"),
        ("autoencoder", "encode"),
        ("autoencoder", "decode"),
        ("data", "training loader"),
    }
    for m in report["measurements"]:  # every number with its unit
        for name, quantity in m["metrics"].items():
            assert set(quantity) == {"value", "unit"} and quantity["unit"], (m["case"], name)
            assert isinstance(quantity["value"], (int, float)), (m["case"], name)
    assert cases[("peak", "matmul 64x64 float32")]["metrics"]["flops"]["value"] == 2 * 64**3
    assert cases[("sample", "heun x2, guidance 5")]["metrics"]["model_calls"]["value"] == 3
    # The training step's FLOPs, counted here on the same networks: forward and backward of batch 2.
    config = compose_config(TINY, root=BenchRunConfig)
    networks = build_networks(config, 32)
    with FlopCount() as step:
        networks.objective(
            networks.unet.train(), torch.randn(2, 4, 16, 16), torch.randn(2, 16, 32)
        ).backward()
    train = cases[("train", "unet step")]["metrics"]
    assert train["flops_per_step"] == {"value": step.total, "unit": "FLOP"}
    assert "| unet step" in result.stdout and "wrote " + str(tmp_path / "run" / "bench.json") in result.stdout


def test_cli_compares_with_diffusers(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "elsewhere" / "compare.json"
    result = bench(tmp_path, "bench.compare=diffusers", "bench.parts=[train]", f"bench.out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    cases = by_case(json.loads(out.read_text()))
    compared = {case for part, case in cases if part == "compare"}
    assert compared == {"agreement (float32)", "unet step", "ddim x2, guidance 5", "vae decode", "vae encode"}
    agreement = cases[("compare", "agreement (float32)")]["metrics"]
    assert set(agreement) == {"unet", "decode", "encode"} and all(
        q["value"] < 1e-4 for q in agreement.values()
    )
    for case in compared - {"agreement (float32)"}:
        assert set(cases[("compare", case)]["metrics"]) == {
            "ours",
            "theirs",
            "ratio",
            "ours_seconds",
            "theirs_seconds",
        }
    assert cases[("compare", "unet step")]["metrics"]["ours"]["unit"] == "samples/s"
    assert "torch.optim.AdamW" in cases[("compare", "unet step")]["notes"]


def test_a_bad_value_stops_with_one_line(tmp_path):
    result = bench(tmp_path, "bench.precision=fp8")
    assert result.returncode == 2
    assert "error: bench.precision must be one of 32, bf16, fp16, got 'fp8'" in result.stdout + result.stderr
    assert not (tmp_path / "run" / "bench.json").exists()


def test_resolution_is_checked_against_the_networks(tmp_path):
    config = compose_config([*TINY, "bench.resolution=33"], root=BenchRunConfig)
    with pytest.raises(ValueError, match="bench.resolution=33 is not divisible by the autoencoder factor 2"):
        run(config, tmp_path)
    assert not (tmp_path / "bench.json").exists()


def test_unknown_bench_keys_are_rejected():
    with pytest.raises(ConfigCompositionException, match="Could not override 'bench.rouns'"):
        compose_config([*TINY, "bench.rouns=3"], root=BenchRunConfig)
