"""ldm/convert.py: ldm -> SD -> ldm on the trained debug run, then txt2img and init_from; one-line errors."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ldm.convert import main
from ldm.sample import run as sample
from ldm.weights.checkpoint import read_checkpoint
from tests.conftest import run_cli, save_tiny_latent_diffusion, train_on_debug_data


def _txt2img(ckpt, outdir) -> np.ndarray:
    args = ["txt2img", "--ckpt", str(ckpt), "--prompt", "a red circle", "--n_samples", "2"]
    written = sample([*args, "--outdir", str(outdir), "--steps", "3", "--seed", "1", "--device", "cpu"])
    return np.stack([np.asarray(Image.open(p)) for p in written])


@pytest.mark.slow
def test_round_trip_through_the_command_line(debug_run, tmp_path):
    ckpt = debug_run / "checkpoints" / "last.ckpt"
    sd = tmp_path / "debug.safetensors"
    result = run_cli(["-m", "ldm.convert", "to-sd", "--ckpt", str(ckpt), "--out", str(sd)])
    assert result.returncode == 0, result.stderr[-2000:]
    state, original = load_file(str(sd)), read_checkpoint(ckpt)["state_dict"]
    # The same SD layout, nothing added or lost; the debug preset's per-channel latent normalization
    # is folded into the autoencoder's 1x1 quant_conv and post_quant_conv (the rest is unchanged).
    assert state.keys() == original.keys() - {"latent_mean", "latent_std"}
    folded = {k for k in state if k.startswith(("first_stage_model.quant_conv.", "first_stage_model.post_quant_conv."))}
    assert len(folded) == 4 and not any(torch.equal(state[k], original[k]) for k in folded)
    assert all(torch.equal(state[k], original[k]) for k in state.keys() - folded)
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
    result = run_cli(["scripts/convert_checkpoint.py", *args])  # the script runs the same command
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.array_equal(_txt2img(back, tmp_path / "a"), _txt2img(ckpt, tmp_path / "b"))

    result = run_cli(["-m", "ldm.convert", "from-sd", "--sd", str(sd), "--arch", "sd2", "--out", "x.ckpt"])
    assert result.returncode != 0 and "does not fit the architecture" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_sd_file_starts_a_fine_tuning_run(debug_run, tmp_path):
    ckpt = debug_run / "checkpoints" / "last.ckpt"
    sd = tmp_path / "init.safetensors"
    main(["to-sd", "--ckpt", str(ckpt), "--out", str(sd), "--no-configs"])
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


def test_to_sd_casts_and_keeps_every_tensor(tmp_path):
    ckpt = save_tiny_latent_diffusion(tmp_path / "last.ckpt", seed=0)
    out = tmp_path / "half.safetensors"
    main(["to-sd", "--ckpt", str(ckpt), "--out", str(out), "--dtype", "fp16", "--no-configs"])
    state, original = load_file(str(out)), read_checkpoint(ckpt)["state_dict"]
    assert state.keys() == original.keys()
    for k, v in original.items():
        expected = v.half() if v.is_floating_point() else v
        assert state[k].dtype == expected.dtype and torch.equal(state[k], expected), k


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["to-sd", "--ckpt", "{tmp}/none.ckpt", "--out", "{tmp}/x.safetensors"],
            "checkpoint not found: {tmp}/none.ckpt",
        ),
        (
            ["from-sd", "--sd", "{tmp}/none.safetensors", "--arch", "sd2", "--out", "{tmp}/x.ckpt"],
            "weights file not found: {tmp}/none.safetensors",
        ),
        (
            ["from-sd", "--sd", "{tmp}/x.safetensors", "--arch", "sd2", "--out", "{tmp}/x.safetensors"],
            "an ldm checkpoint is a torch file with its config: give --out NAME.ckpt",
        ),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main([arg.format(tmp=tmp_path) for arg in args])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message.format(tmp=tmp_path) in lines[0]
    assert not (tmp_path / "x.ckpt").exists()
