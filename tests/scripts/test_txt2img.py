"""Bad input to the sampling scripts: one clear line, no traceback."""

import json

import pytest
from PIL import Image

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            ["--ckpt", "/no/such/last.ckpt", "--prompt", "a red circle"],
            "checkpoint not found: /no/such/last.ckpt",
        ),
        (["--prompt", "   "], "empty prompt"),
        (["--prompt", "a red circle", "--sampler", "nope"], "unknown sampler 'nope'"),
        (["--prompt", "a red circle", "--H", "31"], "not divisible by the autoencoder factor"),
        (["--prompt", "a red circle", "--n_samples", "0"], "--n_samples must be >= 1"),
    ],
)
def test_txt2img_errors(debug_run, tmp_path, extra, message):
    args = [
        "scripts/txt2img.py",
        "--ckpt",
        str(debug_run / "checkpoints" / "last.ckpt"),
        "--outdir",
        str(tmp_path),
    ]
    result = run_cli(args + extra)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_txt2img_rejects_a_stage_one_checkpoint(debug_run, tmp_path):
    ae = debug_run / "autoencoder" / "checkpoints" / "last.ckpt"
    result = run_cli(
        ["scripts/txt2img.py", "--ckpt", str(ae), "--prompt", "a red circle", "--outdir", str(tmp_path)]
    )
    assert result.returncode != 0
    assert (
        "is a stage-1 autoencoder checkpoint, but a stage-2 latent diffusion checkpoint is needed"
        in result.stderr
    )


def test_eval_cli_reports_accuracies(debug_run, tmp_path):
    out = tmp_path / "eval.json"
    result = run_cli(
        [
            "-m",
            "ldm.eval",
            "--ckpt",
            str(debug_run / "checkpoints" / "last.ckpt"),
            "--n_per_prompt",
            "1",
            "--steps",
            "2",
            "--out",
            str(out),
            "--grid",
            str(tmp_path / "g.png"),
        ]
    )
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
