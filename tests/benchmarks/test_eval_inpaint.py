"""benchmarks/eval_inpaint.py: masks over the shape, other targets, PSNR outside the mask."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldm.data.shapes import generate_shapes
from tests.conftest import save_tiny_image_conditioned


def test_the_mask_covers_the_shape_in_whole_cells(load_benchmark):
    eval_inpaint = load_benchmark("eval_inpaint")
    for sample in generate_shapes(20, resolution=32, seed=0, split="val"):
        mask = eval_inpaint.shape_mask(sample, 4)[0]
        bright = torch.from_numpy(np.asarray(sample.image).max(axis=2) > 0)
        assert bool(mask[bright].all())  # every pixel of the shape, edges too, is redrawn
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        assert rows[0] % 4 == 0 and (rows[-1] + 1) % 4 == 0 and cols[0] % 4 == 0 and (cols[-1] + 1) % 4 == 0
        assert mask.sum() == len(rows) * len(cols)  # one rectangle


def test_pooled_psnr_is_over_the_kept_pixels_only(load_benchmark):
    eval_inpaint = load_benchmark("eval_inpaint")
    inputs = torch.zeros(2, 3, 2, 2)
    outputs = inputs.clone()
    outputs[0, :, 0, 0] = 0.1  # kept pixel: error 0.1
    outputs[1, :, 1, 1] = 1.0  # masked pixel: not counted
    keep = torch.ones(2, 1, 2, 2)
    keep[1, :, 1, 1] = 0
    expected = 10 * math.log10(1 / (0.01 / 7))  # 7 kept pixels, one with squared error 0.01
    assert eval_inpaint.pooled_psnr(outputs, inputs, keep) == pytest.approx(expected)


def test_rings_are_the_kept_pixels_at_each_distance_from_the_mask(load_benchmark):
    eval_inpaint = load_benchmark("eval_inpaint")
    masks = torch.zeros(1, 1, 12, 12)
    masks[0, 0, 4:8, 4:8] = 1
    rings = eval_inpaint.rings(masks)
    rows, cols = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
    # Chebyshev distance of each pixel from the 4x4 square [4, 8) x [4, 8)
    distance = torch.maximum(
        (4 - rows).clamp(min=0) + (rows - 7).clamp(min=0), (4 - cols).clamp(min=0) + (cols - 7).clamp(min=0)
    )
    for d, ring in enumerate(rings, start=1):
        torch.testing.assert_close(ring[0, 0], (distance == d).float())
    outputs = torch.zeros(1, 3, 12, 12)
    outputs[:, :, distance == 2] = 0.1
    psnrs = eval_inpaint.ring_psnrs(outputs, torch.zeros(1, 3, 12, 12), masks)
    assert psnrs[0] == math.inf and psnrs[1] == pytest.approx(20.0) and psnrs[2] == math.inf


def test_a_run_reports_hit_rates_and_both_psnrs(load_benchmark, tmp_path, capsys):
    eval_inpaint = load_benchmark("eval_inpaint")
    samples = list(generate_shapes(50, resolution=32, seed=0, split="val"))
    targets = eval_inpaint.other_targets(samples, seed=3)
    assert all(c != s.metadata["color"] and x != s.metadata["shape"] for (c, x), s in zip(targets, samples))
    assert len(set(targets)) > 10  # drawn, not a fixed substitution
    ckpt = save_tiny_image_conditioned(tmp_path / "inpaint.ckpt", "inpainting", seed=0)
    out = tmp_path / "inpaint.json"
    eval_inpaint.main(["--ckpt", str(ckpt), "--n", "3", "--steps", "1", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["n"] == 3 and 0 <= result["asked_color_rate"] <= 1 and 0 < result["mask_fraction"] < 1
    assert result["autoencoder_psnr_outside_mask"] > 0 and result["psnr_outside_mask"] > 0
    assert result["autoencoder_psnr_beyond_one_cell"] > 0 and result["psnr_beyond_one_cell"] > 0
    assert result["ideal_result_psnr_outside_mask"] > 0 and result["ideal_latents_psnr_outside_mask"] > 0
    assert len(result["psnr_rings"]) == len(result["autoencoder_psnr_rings"]) == 3
    assert min(result["psnr_rings"]) > 0
    printed = capsys.readouterr().out
    assert "| asked color % |" in printed and "In the rings of pixels next to the mask" in printed


def test_the_ideal_result_keeps_the_input_outside_the_mask_and_shows_the_target(load_benchmark):
    eval_inpaint = load_benchmark("eval_inpaint")
    from ldm.eval.evaluate import to_uint8
    from ldm.eval.shapes import score_images

    samples = list(generate_shapes(40, resolution=32, seed=0, split="val"))
    targets = eval_inpaint.other_targets(samples, seed=1)
    ideal = eval_inpaint.ideal_results(samples, targets)
    images = torch.stack(
        [torch.from_numpy(np.asarray(s.image)).permute(2, 0, 1).float() / 255 for s in samples]
    )
    masks = torch.stack([eval_inpaint.shape_mask(s, 4) for s in samples])
    assert torch.equal(ideal * (1 - masks), images * (1 - masks))
    assert not torch.equal(ideal, images)
    score = score_images(to_uint8(ideal), [t[0] for t in targets], [t[1] for t in targets])
    assert score.color_accuracy == 1.0 and score.shape_accuracy == 1.0


def test_the_latent_bound_takes_only_the_masked_cells_from_the_ideal(load_benchmark):
    eval_inpaint = load_benchmark("eval_inpaint")
    images, ideal = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, 4:12, 0:8] = 1  # whole 4x4 cells
    masks[1, :, 8:16, 8:16] = 1
    # A lossless "autoencoder" with f = 4: pixels to 48 channels per cell and back.
    decoded, composite = eval_inpaint.latent_bound(
        lambda x: F.pixel_unshuffle(x, 4), lambda z: F.pixel_shuffle(z, 4), images, ideal, masks
    )
    assert torch.equal(decoded, ideal)
    assert torch.equal(composite, torch.where(masks > 0.5, ideal, images))
