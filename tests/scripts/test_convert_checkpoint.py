"""scripts/convert_checkpoint.py on the trained debug run: ldm -> SD -> ldm, then txt2img and init_from."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ldm.weights.checkpoint import read_checkpoint
from tests.conftest import run_cli, train_on_debug_data

pytestmark = pytest.mark.slow


def _txt2img(ckpt, outdir) -> np.ndarray:
    args = ["scripts/txt2img.py", "--ckpt", str(ckpt), "--prompt", "a red circle", "--n_samples", "2"]
    result = run_cli([*args, "--outdir", str(outdir), "--steps", "3", "--seed", "1"])
    assert result.returncode == 0, result.stderr[-2000:]
    return np.stack([np.asarray(Image.open(p)) for p in sorted((outdir / "samples").glob("*.png"))])


def test_round_trip_through_the_command_line(debug_run, tmp_path):
    ckpt = debug_run / "checkpoints" / "last.ckpt"
    sd = tmp_path / "debug.safetensors"
    result = run_cli(["scripts/convert_checkpoint.py", "to-sd", "--ckpt", str(ckpt), "--out", str(sd)])
    assert result.returncode == 0, result.stderr[-2000:]
    state, original = load_file(str(sd)), read_checkpoint(ckpt)["state_dict"]
    assert state.keys() == original.keys()  # the same SD layout, nothing added or lost
    assert all(torch.equal(state[k], original[k]) for k in state)
    # The architecture beside it: diffusers configs (8 GroupNorm groups stated), no LDM yaml (it cannot
    # state them), and the reason on stderr.
    configs = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and p != sd)
    assert configs == [
        "debug-diffusers/scheduler/scheduler_config.json",
        "debug-diffusers/unet/config.json",
        "debug-diffusers/vae/config.json",
    ]
    assert "no debug.yaml written" in result.stderr and "autoencoder.norm_groups=8" in result.stderr

    back = tmp_path / "back.ckpt"
    args = ["from-sd", "--sd", str(sd), "--arch", str(debug_run / "config.yaml"), "--out", str(back)]
    result = run_cli(["scripts/convert_checkpoint.py", *args])
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.array_equal(_txt2img(back, tmp_path / "a"), _txt2img(ckpt, tmp_path / "b"))

    result = run_cli(
        ["scripts/convert_checkpoint.py", "from-sd", "--sd", str(sd), "--arch", "sd2", "--out", "x.ckpt"]
    )
    assert result.returncode != 0 and "does not fit the architecture" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_sd_file_starts_a_fine_tuning_run(debug_run, tmp_path):
    ckpt = debug_run / "checkpoints" / "last.ckpt"
    sd = tmp_path / "init.safetensors"
    args = ["scripts/convert_checkpoint.py", "to-sd", "--ckpt", str(ckpt), "--out", str(sd), "--no-configs"]
    assert run_cli(args).returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == ["init.safetensors"]  # --no-configs: the weights only
    run_dir = tmp_path / "run"
    result = train_on_debug_data(debug_run, run_dir, f"diffusion.init_from={sd}", "diffusion.max_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run_dir / "autoencoder").exists()  # the autoencoder came from the SD file
    output = result.stdout + result.stderr
    assert "stage 1 skipped" in output and "denoiser, autoencoder, conditioner" in output
    state, init = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"], load_file(str(sd))
    frozen = [k for k in init if k.startswith(("first_stage_model.", "cond_stage_model."))]
    assert frozen and all(torch.equal(state[k], init[k]) for k in frozen)
    assert state["scale_factor"].item() == init["scale_factor"].item()  # taken from the file
