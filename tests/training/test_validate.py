"""ldm/training/validate.py: impossible values fail at start-up, in one line, before anything trains."""

from __future__ import annotations

import dataclasses

import pytest

from ldm.config import AutoencoderConfig
from ldm.training.config_store import compose_config
from ldm.training.train import run
from ldm.training.validate import ConfigError, check_config, downsample_factor
from tests.conftest import run_cli

IMPOSSIBLE = [
    ("autoencoder.max_steps=0", "autoencoder.max_steps must be >= 1 (got 0)"),
    ("diffusion.max_steps=-5", "diffusion.max_steps must be >= 1 (got -5)"),
    ("data.batch_size=0", "data.batch_size must be >= 1 (got 0)"),
    ("diffusion.batch_size=-2", "diffusion.batch_size must be >= 1 (got -2)"),
    ("autoencoder.batch_size=0", "autoencoder.batch_size must be >= 1 (got 0)"),
    ("sampler.guidance_scale=-1", "sampler.guidance_scale must be >= 0 (got -1.0)"),
    ("data.resolution=33", "data.resolution must be divisible by the autoencoder's factor 2 (got 33)"),
    ("diffusion.learning_rate=0", "diffusion.learning_rate must be > 0 (got 0.0)"),
    ("autoencoder.learning_rate=-1e-4", "autoencoder.learning_rate must be > 0 (got -0.0001)"),
    ("conditioner.caption_dropout=1.5", "conditioner.caption_dropout must be in [0, 1) (got 1.5)"),
    ("data.max_skip_fraction=-0.1", "data.max_skip_fraction must be in [0, 1] (got -0.1)"),
    ("sampler.guidance_rescale=2", "sampler.guidance_rescale must be in [0, 1] (got 2.0)"),
    ("sampler.guidance_interval=[3,1]", "sampler.guidance_interval: guidance interval must be [low, high]"),
    ("sampler.name=dpm", "sampler.name must be one of ddpm, ddim"),
    ("trainer.precision=bf17-mixed", "trainer.precision must be one of auto, "),
    ("logger.kind=tensorbored", "logger.kind must be one of csv, wandb, tensorboard (got 'tensorbored')"),
    ("data.num_workers=-1", "data.num_workers must be >= 0 (got -1)"),
    ("data.prefetch_factor=0", "data.prefetch_factor must be >= 1 (got 0)"),
    ("sampler.steps=0", "sampler.steps must be >= 1 (got 0)"),
    ("diffusion.latent_normalization=white", "diffusion.latent_normalization must be one of scale, channel"),
    ("diffusion.scale_factor=0.2", "diffusion.scale_factor applies to latent_normalization=scale"),  # debug: channel
]


@pytest.mark.parametrize("override,message", IMPOSSIBLE, ids=[o for o, _ in IMPOSSIBLE])
def test_impossible_values_stop_the_run_before_anything_is_built(tmp_path, override, message):
    config = compose_config(["experiment=debug", f"data.root={tmp_path / 'data'}", override])
    with pytest.raises(ConfigError) as error:
        run(config, tmp_path / "run")
    text = str(error.value)
    assert text.startswith(f"config: {message}") and "\n" not in text
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()  # nothing generated


FSDP = ["experiment=debug", "trainer.strategy=fsdp", "trainer.accelerator=cpu"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([*FSDP, "diffusion.ema=true"], "config: diffusion.ema must be false under trainer.strategy=fsdp (no sharded EMA yet; or use ddp) (got True)"),
        (
            [*FSDP, "trainer.precision=bf16-mixed"],
            "config: trainer.precision under trainer.strategy=fsdp must be 32-true off CUDA (got 'bf16-mixed')",
        ),
    ],
)
def test_what_fsdp_cannot_do_yet_stops_the_run(tmp_path, overrides, message):
    config = compose_config([*overrides, f"data.root={tmp_path / 'data'}"])
    with pytest.raises(ConfigError) as error:
        run(config, tmp_path / "run")
    assert str(error.value) == message
    check_config(compose_config(FSDP))  # what it can do passes
    check_config(compose_config([*FSDP, "diffusion.ema=true", "stage=autoencoder"]))  # stage 1: DDP


def test_the_defaults_and_presets_pass():
    for overrides in ([], ["experiment=debug"], ["experiment=sd2_base"], ["data=webdataset"]):
        check_config(compose_config(overrides))
    for experiment in ("shapes_sr", "shapes_inpaint"):
        check_config(compose_config([f"experiment={experiment}"]))


@pytest.mark.parametrize("overrides,message", [
    (["experiment=shapes_sr", "autoencoder.ch_mult=[1,2]"],
     "config: image_conditioning.upscale=4 must equal the autoencoder's factor 2"),
    (["experiment=shapes_inpaint", "denoiser.in_channels=4"], "config: denoiser in/out channels (4/4) must be"),
    (["experiment=debug", "image_conditioning.task=inpainting"],
     "config: image_conditioning.task=inpainting concatenates 5 channels to the latent"),
    (["experiment=shapes_inpaint", "data=webdataset", "data.cached_latents=true"],
     "config: data.cached_latents cannot train image_conditioning (it is built from the images)"),
])  # fmt: skip
def test_image_conditioning_that_cannot_train_stops_at_start_up(overrides, message):
    with pytest.raises(ConfigError) as error:
        check_config(compose_config(overrides))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_resolution_is_checked_against_the_autoencoder_that_stage_2_uses():
    config = compose_config(["experiment=debug", "data.resolution=36"])  # debug: f = 2
    check_config(config)
    f8 = AutoencoderConfig(ch_mult=[1, 2, 4, 4])  # a checkpoint's architecture: f = 8
    assert downsample_factor(f8) == 8
    with pytest.raises(ConfigError, match="divisible by the autoencoder's factor 8"):
        check_config(dataclasses.replace(config, stage="diffusion"), f8)


def test_command_line_prints_one_line_and_trains_nothing(tmp_path):
    result = run_cli(
        ["-m", "ldm.train", "experiment=debug", f"hydra.run.dir={tmp_path}", "diffusion.max_steps=-5"]
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "diffusion.max_steps must be >= 1 (got -5)" in errors[0]
    assert "Traceback" not in output
    assert not (tmp_path / "autoencoder").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.compose.held_out=['purple square']", "config: data.compose.held_out: 'purple square' is not"),
        ("data.compose.task_mix.relation=-1", "config: data.compose.task_mix must be non-negative"),
        ("data.compose.size_words=2", "config: data.compose.size_words must be in [0, 1] (got 2.0)"),
    ],
)
def test_compose_settings_are_checked_at_start_up(override, message):
    config = compose_config(["experiment=compose", override])
    with pytest.raises(ConfigError) as error:
        check_config(config)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    check_config(compose_config(["experiment=compose"]))
    check_config(compose_config(["experiment=compose_gpu"]))
