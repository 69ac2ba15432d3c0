"""Shared fixtures: tiny configs, one tiny trained run of the debug preset, a clock with known readings."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from ldm.autoencoder.model import KLAutoencoder
from ldm.config import (
    AutoencoderConfig,
    ConditionerConfig,
    DiffusionConfig,
    SamplerConfig,
    UNetConfig,
)

ROOT = Path(__file__).resolve().parent.parent


def tiny_module_configs() -> dict:
    """Keyword arguments of a tiny LatentDiffusionModule (32px images, f=2, 16x16x4 latents)."""
    return dict(
        autoencoder=AutoencoderConfig(resolution=32, ch=32, ch_mult=[1, 2], num_res_blocks=1),
        denoiser=UNetConfig(
            model_channels=32,
            channel_mult=[1],
            num_res_blocks=1,
            attention_resolutions=[1],
            num_head_channels=16,
            context_dim=32,
        ),
        conditioner=ConditionerConfig(
            arch="custom", pretrained=None, context_length=16, width=32, heads=2, layers=2
        ),
        diffusion=DiffusionConfig(max_steps=10),
        sampler=SamplerConfig(steps=3),
        image_size=32,
    )


def assert_float32_close(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None) -> None:
    """Equal to float32 rounding: max |actual - expected| <= 1e-5 x `scale` (default: max |expected|)."""
    assert actual.shape == expected.shape
    scale = expected.abs().max().item() if scale is None else scale
    assert scale > 0
    assert (actual - expected).abs().max().item() <= 1e-5 * scale


def assert_same_gradients(actual: torch.Tensor, expected: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    """The gradients of `actual` and of `expected` with respect to `inputs`, under one random upstream
    gradient, agree to float32 rounding."""
    upstream = torch.randn(expected.shape, generator=torch.Generator().manual_seed(0))
    ours = torch.autograd.grad(actual, inputs, upstream, retain_graph=True)
    reference = torch.autograd.grad(expected, inputs, upstream, retain_graph=True)
    for a, b in zip(ours, reference):
        assert_float32_close(a, b)


def random_tiny_unet(seed: int = 0):
    """A two-level U-Net (8x8 latents, 16-dim context) with every parameter perturbed, the
    zero-initialised output convolutions too."""
    from ldm.denoiser import UNetModel

    torch.manual_seed(seed)
    unet = UNetModel(
        in_channels=4, out_channels=4, model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
        attention_resolutions=[2], num_head_channels=16, num_heads=-1, transformer_depth=1,
        context_dim=16, use_linear_in_transformer=True,
    )  # fmt: skip
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    return unet


def save_tiny_autoencoder(path: Path, config: AutoencoderConfig, seed: int) -> KLAutoencoder:
    """A randomly initialised autoencoder saved as a stage-1 checkpoint (no latent statistics)."""
    torch.manual_seed(seed)
    model = KLAutoencoder.from_config(config).eval()
    state = {f"autoencoder.{k}": v for k, v in model.state_dict().items()}
    torch.save(
        {
            "ldm_stage": "autoencoder",
            "state_dict": state,
            "hyper_parameters": {"autoencoder": asdict(config)},
        },
        path,
    )
    return model


def save_tiny_latent_diffusion(path: Path, seed: int) -> Path:
    """A randomly initialised tiny LatentDiffusion (`tiny_module_configs`) saved as a stage-2 checkpoint."""
    from ldm.diffusion.latent_diffusion import LatentDiffusion

    torch.manual_seed(seed)
    module = LatentDiffusion(**tiny_module_configs())
    torch.nn.init.normal_(module.model.diffusion_model.out[2].weight, std=0.05)  # not zero: images vary
    state = {"ldm_stage": "diffusion", "state_dict": module.state_dict()}
    torch.save({**state, "hyper_parameters": module.checkpoint_hparams}, path)
    return path


def save_tiny_image_conditioned(path: Path, task: str, seed: int, distillation: Any = None) -> Path:
    """A randomly initialised tiny super-resolution (x2: 16 -> 32 px, the autoencoder's factor) or
    inpainting (32 px) LatentDiffusion saved as a stage-2 checkpoint; its U-Net has two levels. With
    `distillation` (a DistilledSampling), a distilled student of it (w an input when guidance was)."""
    import dataclasses

    from ldm.config import ImageConditioningConfig
    from ldm.diffusion.latent_diffusion import LatentDiffusion

    configs = tiny_module_configs()
    extra = {"super_resolution": dict(in_channels=7, concat_channels=3, num_classes=1000),
             "inpainting": dict(in_channels=9, concat_channels=5)}[task]  # fmt: skip
    if distillation is not None:
        extra["guidance_embed_dim"] = 16 if distillation.guided else 0
        configs["diffusion"] = DiffusionConfig(parameterization=distillation.parameterization)
        configs["sampler"] = distillation.sampler(configs["sampler"])
    configs["denoiser"] = dataclasses.replace(configs["denoiser"], channel_mult=[1, 2], **extra)
    upscale = 2 if task == "super_resolution" else 4
    torch.manual_seed(seed)
    image_conditioning = ImageConditioningConfig(task=task, upscale=upscale)
    module = LatentDiffusion(**configs, image_conditioning=image_conditioning, distillation=distillation)
    with torch.no_grad():  # every weight random, so that the image conditioning changes the samples
        for p in module.model.diffusion_model.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    state = {"ldm_stage": "diffusion", "state_dict": module.state_dict()}
    torch.save({**state, "hyper_parameters": module.checkpoint_hparams}, path)
    return path


def pooled_std(means: list[float], stds: list[float], n: int) -> float:
    """The (unbiased) std of all len(means) x n values, from each group's mean and unbiased std over n values.

    Sum of squared deviations from the grand mean m: sum over groups of (n - 1) s_c^2 + n (m_c - m)^2.
    """
    m = sum(means) / len(means)
    squares = sum((n - 1) * s**2 + n * (mean - m) ** 2 for mean, s in zip(means, stds))
    return math.sqrt(squares / (len(means) * n - 1))


def run_cli(args: list[str], cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command line of this project with the current interpreter."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def train_on_debug_data(debug_run: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m ldm.train experiment=debug` in `run_dir`, on the debug run's shapes set, no progress bar."""
    args = [
        "-m",
        "ldm.train",
        "experiment=debug",
        f"hydra.run.dir={run_dir}",
        f"data.root={debug_run.parent / 'data'}",
    ]
    return run_cli([*args, "trainer.enable_progress_bar=false", *overrides])


@pytest.fixture(scope="session", autouse=True)
def _inductor_cache_in_the_test_folder(tmp_path_factory):
    """torch.compile's inductor writes its cache to /tmp/torchinductor_$USER, where it outlives the run
    and grows by gigabytes over repeated runs; a run of the suite keeps it in its own temporary folder
    (removed with it), unless the caller chose another cache folder. (Importing parts of torch already
    sets TORCHINDUCTOR_CACHE_DIR to the default, so only a different folder counts as chosen.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is not None and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        yield
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor"))
    yield
    if chosen is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = chosen


@pytest.fixture(scope="session")
def debug_run(tmp_path_factory) -> Path:
    """The run directory of `python -m ldm.train experiment=debug` (trained once per session)."""
    base = tmp_path_factory.mktemp("debug_run")
    run_dir = base / "run"
    result = run_cli(
        [
            "-m",
            "ldm.train",
            "experiment=debug",
            f"hydra.run.dir={run_dir}",
            f"data.root={base / 'data'}",
            "trainer.enable_progress_bar=false",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def quiet_trainer(**options):
    """A CPU Lightning Trainer without logger, checkpoints, progress bar, summary or validation."""
    import pytorch_lightning as pl

    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    return pl.Trainer(**{**defaults, **options})


class SquaresClock:
    """The ``time`` module, except that ``perf_counter`` reads 0, 1, 4, 9, ...: call n reads n^2.

    A benchmark that reads the clock before and after each timed run (calls 2k and 2k + 1) reports
    (2k + 1)^2 - (2k)^2 = 4k + 1 seconds for its k-th run: 1, 5, 9, 13, ...
    """

    def __init__(self) -> None:
        self.calls = 0

    def perf_counter(self) -> float:
        reading = float(self.calls**2)
        self.calls += 1
        return reading

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def squares_clock(monkeypatch):
    """squares_clock(module) -> a SquaresClock that `module` now reads as its ``time``."""

    def install(module: ModuleType) -> SquaresClock:
        clock = SquaresClock()
        monkeypatch.setattr(module, "time", clock)
        return clock

    return install
