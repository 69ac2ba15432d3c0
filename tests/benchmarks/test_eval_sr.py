"""benchmarks/eval_sr.py: PSNR, SSIM and the evaluator's accuracy of three upsamplings of the shapes split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data.shapes import generate_shapes
from ldm.upscaler import Upscaler
from tests.conftest import save_tiny_image_conditioned


def test_pil_baselines_and_metrics_are_the_libraries_own(load_benchmark):
    eval_sr = load_benchmark("eval_sr")
    g = np.random.default_rng(0)
    low = [g.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(2)]
    up = eval_sr.pil_upsample(low, 4, "lanczos")
    assert np.array_equal(
        up[1], np.asarray(Image.fromarray(low[1]).resize((16, 16), Image.Resampling.LANCZOS))
    )
    original = [g.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2)]
    metrics = eval_sr.image_metrics(up, original)
    # PSNR closed form per image, then the mean.
    mse = [np.mean((u.astype(np.float64) - o.astype(np.float64)) ** 2) / 255**2 for u, o in zip(up, original)]
    assert metrics["psnr"] == pytest.approx(np.mean([10 * np.log10(1 / m) for m in mse]), rel=1e-5)
    assert eval_sr.image_metrics(original, original)["ssim"] == pytest.approx(1.0)


def test_a_run_reports_every_method_and_the_originals(load_benchmark, tmp_path, capsys):
    eval_sr = load_benchmark("eval_sr")
    ckpt = save_tiny_image_conditioned(tmp_path / "sr.ckpt", "super_resolution", seed=0)  # x2, 32 px
    out = tmp_path / "sr.json"
    eval_sr.main(["--ckpt", str(ckpt), "--n", "3", "--steps", "1", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert (result["n"], result["factor"], result["resolution"], result["noise_level"]) == (3, 2, 32, 20)
    assert list(result["rows"]) == ["original", "autoencoder", "model", "bicubic", "lanczos"]
    assert result["rows"]["original"]["color_accuracy"] == 1.0  # the evaluator on the rendered images
    rows = result["rows"]
    assert all(rows[k]["ssim"] > 0.9 and rows[k]["psnr"] > 20 for k in ("bicubic", "lanczos"))
    assert -1 <= rows["model"]["ssim"] <= 1 and rows["model"]["psnr"] > 0  # random weights
    assert "| bicubic |" in capsys.readouterr().out

    # The autoencoder row: the originals through the model's own autoencoder, rounded to 8 bits.
    pipe = Upscaler.from_checkpoint(ckpt, device="cpu").pipe
    originals = [np.asarray(s.image) for s in generate_shapes(3, resolution=32, seed=0, split="val")]
    images = torch.from_numpy(np.stack(originals)).permute(0, 3, 1, 2).float() / 255
    decoded = (pipe.decode(pipe.encode(images)) * 255).round().clamp(0, 255)
    psnr = [10 * np.log10(1 / ((d / 255 - i) ** 2).mean().item()) for d, i in zip(decoded, images)]
    assert rows["autoencoder"]["psnr"] == pytest.approx(np.mean(psnr), rel=1e-4)
