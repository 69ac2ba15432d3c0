"""ldm/eval/__main__.py: `python -m ldm.eval` prints and writes the accuracies; bad input is one line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.eval import metrics
from ldm.eval.__main__ import run
from ldm.eval.shapes import SHAPE_PROMPTS
from tests.conftest import run_cli, save_tiny_latent_diffusion
from tests.eval.extractors import (
    frechet_numpy,
    load_tiny_features,
    random_images,
    save_tiny_clip,
    save_tiny_features,
)


def test_eval_cli_reports_accuracies(tmp_path):
    ckpt = save_tiny_latent_diffusion(tmp_path / "last.ckpt", seed=0)
    out = tmp_path / "eval.json"
    args = ["-m", "ldm.eval", "--ckpt", str(ckpt), "--n_per_prompt", "1", "--steps", "2", "--device", "cpu"]
    result = run_cli([*args, "--out", str(out), "--grid", str(tmp_path / "g.png")])
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    saved = json.loads(out.read_text())
    assert summary["n"] == saved["n"] == 18 and summary["sampler"]["steps"] == 2
    # One image per prompt: each prompt's accuracy is 0 or 1, and the overall one is their mean.
    per_prompt = saved["per_prompt"].values()
    assert [entry["n"] for entry in per_prompt] == [1] * 18
    for key in ("color_accuracy", "shape_accuracy"):
        assert {entry[key] for entry in per_prompt} <= {0.0, 1.0}
        assert summary[key] == saved[key] == pytest.approx(sum(entry[key] for entry in per_prompt) / 18)
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.size == (1 * 33 + 1, 18 * 33 + 1)  # 18 rows of one 32 px sample, 1 px padding


def test_eval_cli_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    result = run_cli(["-m", "ldm.eval", "--ckpt", str(tmp_path / "none.ckpt")])
    assert result.returncode == 2
    missing = tmp_path / "none.ckpt"
    hint = "(a run writes it to <run dir>/checkpoints/last.ckpt)"
    assert result.stderr.strip() == f"error: checkpoint not found: {missing} {hint}"


def eval_args(ckpt, *extra: str) -> list[str]:
    return ["--ckpt", str(ckpt), "--steps", "2", "--device", "cpu", "--batch_size", "64", *extra]


def test_seed_sets_are_each_scored_as_a_run_of_their_own(tmp_path, capsys):
    ckpt = save_tiny_latent_diffusion(tmp_path / "last.ckpt", seed=0)
    several = run(
        eval_args(ckpt, "--n_per_prompt", "2", "--seeds", "0", "5", "--grid", str(tmp_path / "g.png"))
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    alone = [
        run(eval_args(ckpt, "--n_per_prompt", "2", *flags)) for flags in (["--seed", "0"], ["--seeds", "5"])
    ]
    default = run(eval_args(ckpt, "--n_per_prompt", "2"))
    single_keys = ("color_accuracy", "shape_accuracy", "n", "per_prompt")
    # --seed 0 is the default
    assert {k: default[k] for k in single_keys} == {k: alone[0][k] for k in single_keys}
    assert several["seeds"] == [0, 5] and [entry["seed"] for entry in several["seed_sets"]] == [0, 5]
    for entry, result in zip(several["seed_sets"], alone, strict=True):
        assert {k: entry[k] for k in single_keys} == {k: result[k] for k in single_keys}
    assert several["n"] == 72 and {e["n"] for e in several["per_prompt"].values()} == {4}
    for key in ("color_accuracy", "shape_accuracy"):
        values = [result[key] for result in alone]
        assert several["mean"][key] == pytest.approx(sum(values) / 2) == pytest.approx(several[key])
        assert several["min"][key] == min(values)
        assert summary[key] == several[key] and summary["min"][key] == several["min"][key]
    assert summary["seeds"] == [0, 5]
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.size == (4 * 33 + 1, 18 * 33 + 1)  # a row per prompt: 2 seed sets x 2 samples
    with pytest.raises(SystemExit):
        run(eval_args(ckpt, "--seed", "1", "--seeds", "2"))
    assert "give --seed or --seeds, not both" in capsys.readouterr().err


def grid_images(path, rows: int, columns: int, size: int = 32) -> torch.Tensor:
    """The uint8 images [rows * columns, 3, size, size] of a grid saved with 1 px padding, row by row."""
    with Image.open(path) as grid:
        pixels = torch.from_numpy(np.array(grid.convert("RGB"))).permute(2, 0, 1)
    step = size + 1
    return torch.stack([
        pixels[:, 1 + r * step : 1 + r * step + size, 1 + c * step : 1 + c * step + size]
        for r in range(rows) for c in range(columns)
    ])  # fmt: skip


def test_fid_kid_and_clip_score_in_the_report(tmp_path, monkeypatch, capsys):
    # FID and KID with a tiny extractor read from its local file (in place of the InceptionV3, whose
    # own loading is tested in tests/eval/test_metrics.py), CLIP score with a tiny open_clip model
    # through the real loading path; all checked against closed forms on the saved samples.
    monkeypatch.setattr(metrics, "load_inception", load_tiny_features)
    ckpt = save_tiny_latent_diffusion(tmp_path / "last.ckpt", seed=0)
    base = eval_args(ckpt, "--n_per_prompt", "1", "--seed", "3")
    run([*base, "--grid", str(tmp_path / "g.png")])
    generated = grid_images(tmp_path / "g.png", rows=18, columns=1)
    captions = [prompt for prompt, _, _ in SHAPE_PROMPTS]
    config, weights, expected_clip = save_tiny_clip(tmp_path, generated, captions)
    reference = tmp_path / "reference"
    reference.mkdir()
    reference_images = random_images(10, seed=1)
    for i, image in enumerate(reference_images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(reference / f"{i:02d}.png")
    inception = save_tiny_features(tmp_path / "tiny-inception.safetensors")
    capsys.readouterr()
    result = run([
        *base, "--metrics", "fid", "kid", "clip", "--reference", str(reference),
        "--inception", str(inception),
        "--clip_model", str(config), "--clip_weights", str(weights),
    ])  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    extractor = load_tiny_features(inception)
    fake = torch.cat([extractor(image[None]) for image in generated]).double().detach().numpy()
    real = torch.cat([extractor(image[None]) for image in reference_images]).double().detach().numpy()
    assert result["fid"] == pytest.approx(frechet_numpy(fake, real), rel=1e-3)
    # KID: subsets of 10 of the 18 generated features against all 10 references; each is a KID of 10 vs 10.
    assert 0 < result["kid"] and result["kid_std"] > 0
    assert result["clip_score"] == pytest.approx(expected_clip, rel=1e-3)
    assert result["n_reference"] == 10 and result["skipped_metrics"] == {}
    assert {k: summary[k] for k in ("fid", "kid", "kid_std", "clip_score")} == {
        k: result[k] for k in ("fid", "kid", "kid_std", "clip_score")
    }


def test_metrics_without_local_weights_are_skipped_in_one_line_each(tmp_path):
    ckpt = save_tiny_latent_diffusion(tmp_path / "last.ckpt", seed=0)
    reference = tmp_path / "reference"
    reference.mkdir()
    Image.new("RGB", (32, 32)).save(reference / "a.png")
    missing_inception = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    missing_clip = tmp_path / "open_clip_model.safetensors"
    args = eval_args(
        ckpt, "--n_per_prompt", "1", "--metrics", "fid", "kid", "clip", "--reference", str(reference)
    )
    result = run_cli([
        "-m", "ldm.eval", *args, "--inception", str(missing_inception), "--clip_weights", str(missing_clip),
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 2
    assert skipped[0].startswith(
        f"fid and kid skipped: InceptionV3 weights file not found: {missing_inception}"
    )
    assert skipped[1].startswith(f"clip skipped: open_clip weights file not found: {missing_clip}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 18 and not {"fid", "kid", "clip_score"} & set(summary)


@pytest.mark.parametrize("extra", [["--seeds", "0", "8"], ["--metrics", "fid", "--reference", "."]])
def test_the_compose_suite_refuses_seed_sets_and_metrics(tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as exit_:
        run(["--ckpt", str(tmp_path / "none.ckpt"), "--suite", "compose", *extra])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().endswith("--suite compose takes one seed set and no --metrics")
