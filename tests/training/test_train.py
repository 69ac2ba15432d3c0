"""End to end through the real command line: train the debug preset, then sample from it."""

import csv

import pytest
import torch
import yaml

from ldm.diffusion.latent_diffusion import LatentDiffusion
from ldm.flops import FlopCount
from ldm.weights.checkpoint import read_checkpoint
from tests.conftest import pooled_std, run_cli, train_on_debug_data

pytestmark = pytest.mark.slow


def test_debug_run_writes_both_stages(debug_run):
    ae = read_checkpoint(
        debug_run / "autoencoder" / "checkpoints" / "last.ckpt", expected_stage="autoencoder"
    )
    ldm = read_checkpoint(debug_run / "checkpoints" / "last.ckpt", expected_stage="diffusion")
    assert ae["global_step"] == 4 and ldm["global_step"] == 4
    # Stage 2 holds the trained stage-1 weights, frozen, under SD's key names.
    for key, value in ae["state_dict"].items():
        if key.startswith("autoencoder."):
            assert torch.equal(ldm["state_dict"]["first_stage_model." + key[len("autoencoder.") :]], value)
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in ldm["state_dict"])
    assert any(k.startswith("cond_stage_model.model.transformer.") for k in ldm["state_dict"])
    # Stage 1's latent statistics, measured on the 32 validation images (4 channels of 16 x 16 at
    # f = 2): its scale factor is 1 / the std pooled from the per-channel ones. Stage 2 of this preset
    # normalizes each channel with them (the scale-factor alternative: test_stage_2_takes_...).
    stats = ae["latent_stats"]
    assert stats["num_images"] == 32 and len(stats["mean"]) == len(stats["std"]) == 4
    pooled = pooled_std(stats["mean"], stats["std"], n=32 * 16 * 16)
    assert stats["scale_factor"] == pytest.approx(1 / pooled, rel=1e-5)
    assert torch.allclose(ldm["state_dict"]["latent_std"], torch.tensor(stats["std"]))
    assert ldm["state_dict"]["scale_factor"].item() == 1.0
    config = yaml.safe_load((debug_run / "config.yaml").read_text())
    assert config["diffusion"]["max_steps"] == 4 and config["denoiser"]["model_channels"] == 32
    assert (debug_run / "images" / "samples-step000004.png").is_file()
    assert (debug_run / "autoencoder" / "images" / "reconstructions-step000004.png").is_file()
    rows = list(csv.DictReader(open(debug_run / "logs" / "diffusion" / "metrics.csv")))
    assert any(r.get("val/loss") for r in rows)
    rates = [r for r in rows if r.get("train/device/samples_per_sec")]  # a window of 2 batches
    assert [int(r["step"]) for r in rates] == [1, 2, 3]  # from the window's second batch on
    batch_size = config["diffusion"]["batch_size"]
    assert batch_size == 32
    # The rates of one window: samples = batches x 32; FLOPs = batches x those of one training step
    # (frozen encoders' forward, U-Net forward and backward), counted here on the same networks.
    model = LatentDiffusion.from_hparams(ldm["hyper_parameters"]).train()
    batch = {"image": torch.rand(batch_size, 3, 32, 32) * 2 - 1, "caption": ["a red circle"] * batch_size}
    with FlopCount() as step:
        model.loss(batch, train=True).backward()
    for r in rates:
        batches_per_sec = float(r["train/device/batches_per_sec"])
        assert float(r["train/device/samples_per_sec"]) == pytest.approx(batch_size * batches_per_sec)
        assert float(r["train/device/flops_per_sec"]) == pytest.approx(step.total * batches_per_sec)


def test_txt2img_on_the_trained_checkpoint(debug_run, tmp_path):
    ckpt = debug_run / "checkpoints" / "last.ckpt"
    args = [
        "scripts/txt2img.py",
        "--ckpt",
        str(ckpt),
        "--prompt",
        "a red circle",
        "--n_samples",
        "3",
        "--n_iter",
        "2",
        "--outdir",
        str(tmp_path),
        "--steps",
        "3",
        "--seed",
        "5",
    ]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-2000:]
    samples = sorted((tmp_path / "samples").glob("*.png"))
    assert [p.name for p in samples] == [f"{i:05d}.png" for i in range(6)]
    assert (tmp_path / "grid-0000.png").is_file()
    # Reproducible: a second call with the same seed writes the same images, numbered on.
    assert run_cli(args).returncode == 0
    import numpy as np
    from PIL import Image

    first = np.asarray(Image.open(tmp_path / "samples" / "00000.png"))
    again = np.asarray(Image.open(tmp_path / "samples" / "00006.png"))
    assert first.shape == (32, 32, 3) and np.array_equal(first, again)
    assert (tmp_path / "grid-0001.png").is_file()


def test_diffusion_stage_alone_from_a_trained_autoencoder(debug_run, tmp_path):
    ae_ckpt = debug_run / "autoencoder" / "checkpoints" / "last.ckpt"
    run_dir = tmp_path / "run"
    result = train_on_debug_data(
        debug_run, run_dir, f"autoencoder.ckpt_path={ae_ckpt}", "diffusion.max_steps=2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run_dir / "autoencoder").exists()  # stage 1 skipped
    assert "stage 1 skipped" in result.stdout + result.stderr
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", expected_stage="diffusion")
    ae = read_checkpoint(ae_ckpt)
    key = "encoder.conv_in.weight"
    assert torch.equal(ckpt["state_dict"]["first_stage_model." + key], ae["state_dict"]["autoencoder." + key])


@pytest.mark.parametrize("normalization", ["channel", "scale"])
def test_stage_2_takes_stage_1s_latent_statistics(debug_run, tmp_path, normalization):
    """Per channel (mean and std of each latent channel) or as one scale factor (1 / std)."""
    ae_ckpt = debug_run / "autoencoder" / "checkpoints" / "last.ckpt"
    stats = read_checkpoint(ae_ckpt)["latent_stats"]
    run_dir = tmp_path / "run"
    result = train_on_debug_data(
        debug_run, run_dir, f"autoencoder.ckpt_path={ae_ckpt}", "diffusion.max_steps=2",
        f"diffusion.latent_normalization={normalization}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    if normalization == "channel":
        assert torch.allclose(state["latent_mean"], torch.tensor(stats["mean"]))
        assert torch.allclose(state["latent_std"], torch.tensor(stats["std"]))
        assert state["scale_factor"].item() == 1.0
    else:
        assert "latent_mean" not in state and "latent_std" not in state
        assert state["scale_factor"].item() == pytest.approx(stats["scale_factor"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["autoencoder.chanels=3"], "Could not override 'autoencoder.chanels'"),
        (["denoiser=unet_xatn"], "Could not find 'denoiser/unet_xatn'"),
        (["stage=everything"], "stage must be one of all, autoencoder, diffusion, distill (got 'everything')"),
        (["stage=diffusion"], "needs a trained autoencoder"),
        (["autoencoder.ckpt_path=/no/such.ckpt"], "checkpoint not found: /no/such.ckpt"),
        (["sampler.name=ddmi"], "sampler.name must be one of ddpm, ddim"),
    ],
)
def test_bad_training_input_gives_one_clear_line(args, message, tmp_path):
    result = run_cli(["-m", "ldm.train", "experiment=debug", f"hydra.run.dir={tmp_path}", *args])
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert message in output
    assert "Traceback" not in output


def test_v_prediction_zero_terminal_snr_min_snr_and_ema_through_the_command_line(debug_run, tmp_path):
    run_dir = tmp_path / "run"
    result = train_on_debug_data(
        debug_run,
        run_dir,
        f"autoencoder.ckpt_path={debug_run / 'autoencoder' / 'checkpoints' / 'last.ckpt'}",
        "diffusion.parameterization=v",
        "diffusion.zero_terminal_snr=true",
        "diffusion.loss_weighting=min_snr",
        "diffusion.offset_noise=0.1",
        "diffusion.ema=true",
        "diffusion.max_steps=3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", expected_stage="diffusion")
    state = ckpt["state_dict"]
    assert ckpt["hyper_parameters"]["diffusion"]["parameterization"] == "v"
    assert state["model_ema.num_updates"].item() == 3  # one update per optimizer step
    unet = [k for k in state if k.startswith("model.diffusion_model.")]
    assert all("model_ema.module." + k[len("model.diffusion_model.") :] in state for k in unet)
    from ldm.pipeline import Text2Image

    pipe = Text2Image.from_checkpoint(run_dir / "checkpoints" / "last.ckpt", device="cpu")
    assert torch.isfinite(pipe.denoiser.sigma_max) and pipe.denoiser.sigma_max > 4000  # sigma_T stand-in
    images = pipe(["a red circle"], [0])
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_uncached_text_encoder_offline_fails_before_training_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    args = ["experiment=debug", f"hydra.run.dir={tmp_path / 'run'}", "conditioner.arch=ViT-B-32"]
    result = subprocess.run(
        [sys.executable, "-m", "ldm.train", *args, "conditioner.pretrained=laion2b_s34b_b79k"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "weights 'laion2b_s34b_b79k' are not in the local open_clip / Hugging Face cache" in output
    assert not (tmp_path / "run" / "autoencoder").exists()  # nothing was trained first


def _stage2(debug_run, run_dir, *args):
    ae_ckpt = debug_run / "autoencoder" / "checkpoints" / "last.ckpt"
    result = train_on_debug_data(debug_run, run_dir, f"autoencoder.ckpt_path={ae_ckpt}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt", expected_stage="diffusion")


def test_resumed_diffusion_stage_continues_the_step_and_the_data_stream(debug_run, tmp_path):
    whole = _stage2(debug_run, tmp_path / "whole", "diffusion.max_steps=20")
    _stage2(debug_run, tmp_path / "first", "diffusion.max_steps=13")
    resumed = _stage2(
        debug_run,
        tmp_path / "resumed",
        f"resume={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}",
        "diffusion.max_steps=20",
    )
    assert resumed["global_step"] == whole["global_step"] == 20
    # 128 images in stage 2's batches of 32: 4 per pass; step 13 is 1 batch into pass 3, step 20 ends pass 4.
    (stream,) = [rank["stream"] for rank in resumed["ShardDataModule"]["ranks"]]
    assert stream == whole["ShardDataModule"]["ranks"][0]["stream"]
    assert stream["epoch"] == 4 and stream["workers"]["0"] == [128, 128]
    counts = resumed["ShardDataModule"]["ranks"][0]["counts"]
    assert counts == whole["ShardDataModule"]["ranks"][0]["counts"]


def test_resume_rejects_a_checkpoint_of_the_other_stage(debug_run, tmp_path):
    ae_ckpt = debug_run / "autoencoder" / "checkpoints" / "last.ckpt"
    args = [
        "-m",
        "ldm.train",
        "experiment=debug",
        f"hydra.run.dir={tmp_path}",
        "stage=diffusion",
        f"resume={ae_ckpt}",
    ]
    result = run_cli(args)
    assert result.returncode != 0
    assert "is a stage-1 checkpoint, but stage=diffusion" in result.stdout + result.stderr


def test_resumed_autoencoder_stage_continues_its_step_and_stream(debug_run, tmp_path):
    first = tmp_path / "first"
    assert (
        train_on_debug_data(debug_run, first, "stage=autoencoder", "autoencoder.max_steps=3").returncode == 0
    )
    ckpt = first / "autoencoder" / "checkpoints" / "last.ckpt"
    result = train_on_debug_data(
        debug_run, tmp_path / "resumed", "stage=autoencoder", f"resume={ckpt}", "autoencoder.max_steps=6"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = read_checkpoint(
        tmp_path / "resumed" / "autoencoder" / "checkpoints" / "last.ckpt", "autoencoder"
    )
    assert resumed["global_step"] == 6
    # 128 images in stage 1's batches of 16: step 6 ends the sixth of 8 batches of pass 0.
    (state,) = resumed["ShardDataModule"]["ranks"]
    assert state["stream"]["epoch"] == 0 and state["stream"]["workers"]["0"][1] == 96
