"""benchmarks/encoder_share.py: FLOPs counted on fake tensors equal those of the real networks."""

from __future__ import annotations

import json

import pytest
import torch

from ldm.autoencoder.model import KLAutoencoder
from ldm.benchmark import timing
from ldm.conditioning.text import OpenCLIPTextEncoder
from ldm.denoiser.unet import UNetModel
from ldm.flops import FlopCount
from ldm.training.config_store import compose_config

TINY = ["experiment=shapes", "denoiser.model_channels=32", "denoiser.num_head_channels=16"]


def test_fake_counts_equal_real_counts(tmp_path, load_benchmark):
    bench = load_benchmark("encoder_share")
    out = tmp_path / "share.json"
    rows = bench.main(["--resolutions", "16", "32", "--out", str(out), "--", *TINY])
    assert [r["resolution"] for r in rows] == [16, 32]
    assert [r["latent"] for r in rows] == [[4, 4, 4], [4, 8, 8]]  # f = 4
    assert json.loads(out.read_text())["rows"] == rows

    config = compose_config(TINY)
    autoencoder = KLAutoencoder.from_config(config.autoencoder).requires_grad_(False)
    unet = UNetModel.from_config(config.denoiser)
    with FlopCount() as text:
        OpenCLIPTextEncoder(config.conditioner)(["a red circle"])
    # The penultimate of 2 blocks: width 64, 24 tokens; 2 FLOPs per multiply-add of the block's
    # 12 x 64^2 weights (attention in/out 4 x 64^2, MLP 8 x 64^2) per token, and its attention
    # products (QK^T and AV: 2 x 24^2 x 64 multiply-adds).
    assert text.total == 2 * (12 * 64**2 * 24 + 2 * 24**2 * 64)
    context = torch.randn(1, config.conditioner.context_length, config.denoiser.context_dim)
    for row in rows:
        with FlopCount() as encoder:
            autoencoder.encode(torch.randn(1, 3, row["resolution"], row["resolution"]))
        with FlopCount() as step:
            unet(torch.randn(1, *row["latent"]), torch.tensor([10]), context).sum().backward()
        assert row["encoder_gflop"] == round(encoder.total / 1e9, 3)
        assert row["unet_step_gflop"] == round(step.total / 1e9, 3)
        assert row["text_gflop"] == round(text.total / 1e9, 3)
        total = encoder.total + text.total + step.total
        assert row["ceiling"] == round(total / (text.total + step.total), 3)
        assert row["ceiling_with_text"] == round(total / step.total, 3)
    # Convolutions dominate: the encoder's FLOPs grow with the pixels (4x from 16 to 32 px).
    assert 3.5 < rows[1]["encoder_gflop"] / rows[0]["encoder_gflop"] < 4.5


def test_resolution_must_be_a_multiple_of_the_factor(load_benchmark):
    bench = load_benchmark("encoder_share")
    with pytest.raises(ValueError, match="multiple of the autoencoder's factor 4"):
        bench.main(["--resolutions", "30", "--", *TINY])


def test_timed_ceilings_follow_from_the_timed_networks(load_benchmark, squares_clock):
    bench = load_benchmark("encoder_share")
    clock = squares_clock(timing)  # encoder_share times through ldm.benchmark.timing
    args = ["--resolutions", "16", "--time", "--batch-size", "2", "--repeats", "3", "--", *TINY]
    timed = bench.main(args)[0]["timed"]
    assert timed["resolution"] == 16 and timed["batch_size"] == 2
    # One untimed round, then 3 rounds of the three networks in turn, one clock reading before and
    # after each run: run k lasts 4k + 1 s, so the image encoder's runs last 1, 13 and 25 s, the text
    # encoder's 5, 17 and 29, the U-Net's 9, 21 and 33.
    assert clock.calls == 3 * 3 * 2
    assert (timed["encoder_s"], timed["text_s"], timed["unet_step_s"]) == (13, 17, 21)  # the medians
    # The ceilings are the medians of the rounds' ratios: 15/14, 51/38, 87/62 and 15/9, 51/21, 87/33.
    assert timed["ceiling"] == pytest.approx(51 / 38, rel=1e-12)
    assert timed["ceiling_with_text"] == pytest.approx(51 / 21, rel=1e-12)


def test_timed_step_includes_the_optimizer(load_benchmark, monkeypatch):
    bench = load_benchmark("encoder_share")
    steps = []
    real = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or real(self, *a, **k))
    bench.time_components(compose_config(TINY), 16, batch_size=1, repeats=2)
    assert len(steps) == 3  # the untimed round and two timed ones


def test_timing_needs_a_batch(load_benchmark):
    bench = load_benchmark("encoder_share")
    with pytest.raises(ValueError, match="batch size and repeats must be at least 1"):
        bench.time_components(compose_config(TINY), 16, batch_size=0)
