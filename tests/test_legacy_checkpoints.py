"""Checkpoints written before the core/training split (commit f5c18e3) load and sample as they did."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ldm.pipeline import Text2Image
from ldm.samplers.presets import sampler_preset
from ldm.weights.checkpoint import load_autoencoder

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
PROMPTS, SEEDS = ["a red circle", "a blue square"], [0, 1]
# Bit-identical on the machine that wrote them; other CPUs may pick other kernels, hence a tolerance
# far below what any change to the weights, the sampler or the schedule would move.
TOLERANCE = {"atol": 1e-4, "rtol": 0}


def test_stage2_checkpoint_samples_as_before():
    expected = load_file(str(LEGACY / "expected.safetensors"))
    pipeline = Text2Image.from_checkpoint(LEGACY / "diffusion.ckpt", device="cpu")
    torch.testing.assert_close(pipeline(PROMPTS, SEEDS), expected["ddim"], **TOLERANCE)
    ancestral = sampler_preset(pipeline.sampler, "euler_ancestral")
    torch.testing.assert_close(
        pipeline(PROMPTS, SEEDS, sampler=ancestral), expected["euler_ancestral"], **TOLERANCE
    )


def test_stage1_checkpoint_reconstructs_as_before():
    expected = load_file(str(LEGACY / "expected.safetensors"))["reconstruction"]
    autoencoder = load_autoencoder(LEGACY / "autoencoder.ckpt")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        reconstruction = autoencoder.decode(autoencoder.encode(x).mode())
    torch.testing.assert_close(reconstruction, expected, **TOLERANCE)
