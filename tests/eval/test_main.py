"""ldm/eval/__main__.py: `python -m ldm.eval` prints and writes the accuracies; bad input is one line."""

import json

import pytest
from PIL import Image

from tests.conftest import run_cli, save_tiny_latent_diffusion


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
