"""End to end through the real command lines: experiment=shapes_sr and experiment=shapes_inpaint at the debug
preset's sizes, then scripts/upscale.py, scripts/inpaint.py and the two benchmarks on what they trained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ldm.config import CONF_DIR
from ldm.weights.checkpoint import read_checkpoint
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def debug_size(**changes) -> list[str]:
    """The debug preset's values (experiment/debug.yaml) as command-line overrides, with `changes`."""

    def leaves(tree: dict, prefix: str = ""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            elif key != "defaults":
                yield f"{prefix}{key}", value

    values = dict(leaves(yaml.safe_load((CONF_DIR / "experiment" / "debug.yaml").read_text())))
    values.update(changes)
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def test_super_resolution_preset_trains_and_upscales(tmp_path):
    run_dir = tmp_path / "run"
    overrides = debug_size(**{"autoencoder.ch_mult": [1, 2, 2], "trainer.enable_progress_bar": False})
    args = [
        "-m",
        "ldm.train",
        "experiment=shapes_sr",
        f"hydra.run.dir={run_dir}",
        f"data.root={tmp_path / 'data'}",
    ]
    result = run_cli([*args, *overrides])
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", expected_stage="diffusion")
    state, hparams = checkpoint["state_dict"], checkpoint["hyper_parameters"]
    assert hparams["image_conditioning"]["task"] == "super_resolution" and hparams["image_size"] == 64
    assert state["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 7
    assert state["model.diffusion_model.label_emb.weight"].shape[0] == 1000
    with Image.open(run_dir / "images" / "samples-step000004.png") as grid:  # rows [input, 4 samples]
        assert grid.size == (5 * 65 + 1, 2 * 65 + 1)

    small = tmp_path / "small.png"
    Image.fromarray(np.full((16, 16, 3), (255, 0, 0), dtype=np.uint8)).save(small)
    outdir = tmp_path / "upscaled"
    result = run_cli([
        "scripts/upscale.py", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--init-img", str(small),
        "--prompt", "a red square", "--n_samples", "2", "--steps", "2", "--outdir", str(outdir),
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    shapes = [np.asarray(Image.open(p)).shape for p in sorted((outdir / "samples").glob("*.png"))]
    assert shapes == [(64, 64, 3)] * 2

    result = run_cli([
        "benchmarks/eval_sr.py", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--n", "4",
        "--steps", "2", "--out", str(tmp_path / "sr.json"),
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "sr.json").read_text())["rows"]
    assert rows["original"]["color_accuracy"] == 1.0 and rows["bicubic"]["psnr"] > 15


def test_inpainting_preset_fine_tunes_a_text_to_image_run(debug_run, tmp_path):
    init = debug_run / "checkpoints" / "last.ckpt"
    run_dir = tmp_path / "run"
    args = ["-m", "ldm.train", "experiment=shapes_inpaint", f"hydra.run.dir={run_dir}"]
    overrides = debug_size(**{"diffusion.max_steps": 2, "trainer.enable_progress_bar": False})
    result = run_cli(
        [*args, f"data.root={debug_run.parent / 'data'}", f"diffusion.init_from={init}", *overrides]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run_dir / "autoencoder").exists()  # the text-to-image run's autoencoder is used
    assert (
        "new weights zero: input_blocks.0.0.weight (input channels 4 -> 9)" in result.stdout + result.stderr
    )
    tuned = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", expected_stage="diffusion")
    source = read_checkpoint(init)
    assert tuned["hyper_parameters"]["image_conditioning"]["task"] == "inpainting"
    weight = tuned["state_dict"]["model.diffusion_model.input_blocks.0.0.weight"]
    assert weight.shape[1] == 9
    # Two steps move the weights a little from the text-to-image run's (Adam: about lr per step).
    before = source["state_dict"]["model.diffusion_model.input_blocks.0.0.weight"]
    assert (weight[:, :4] - before).abs().max() < 0.01 and weight[:, 4:].abs().max() < 0.01
    key = "cond_stage_model.model.token_embedding.weight"
    assert torch.equal(tuned["state_dict"][key], source["state_dict"][key])  # the frozen text encoder

    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[8:24, 8:24] = (0, 0, 255)
    Image.fromarray(pixels).save(image)
    Image.fromarray((pixels[..., 2] > 0).astype(np.uint8) * 255).save(mask)
    outdir = tmp_path / "inpainted"
    result = run_cli([
        "scripts/inpaint.py", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--init-img", str(image),
        "--mask", str(mask), "--prompt", "a red circle", "--n_samples", "2", "--steps", "2",
        "--outdir", str(outdir),
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((outdir / "samples").glob("*.png"))) == 2

    result = run_cli([
        "benchmarks/eval_inpaint.py", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--n", "4",
        "--steps", "2", "--out", str(tmp_path / "inpaint.json"),
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "inpaint.json").read_text())["autoencoder_psnr_outside_mask"] > 0
