"""On CUDA, a model exported to SD's single-file layout (ldm/weights/export.py, as ``python -m ldm.convert
to-sd`` writes it) and read back samples what the same file samples on the CPU; where diffusers is
installed, its single-file loader runs the exported U-Net on the GPU and predicts what ours does on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ldm.convert import main as convert
from ldm.pipeline import Text2Image
from ldm.weights.checkpoint import load_latent_diffusion
from ldm.weights.io import read_tensors, write_torch_file
from ldm.weights.sd import ldm_checkpoint_from_sd
from tests.conftest import tiny_module_configs
from tests.gpu.conftest import max_relative_error, requires_cuda
from tests.weights.test_sd import as_checkpoint, tiny_arch, tiny_module

pytestmark = requires_cuda


def exported(tmp_path: Path) -> tuple[Path, Path]:
    """(SD single file with its diffusers configs beside it, ldm checkpoint read back from that file) of
    the tiny model with every weight perturbed."""
    ckpt = tmp_path / "last.ckpt"
    torch.save(as_checkpoint(tiny_module()), ckpt)
    sd = tmp_path / "tiny.safetensors"
    convert(["to-sd", "--ckpt", str(ckpt), "--out", str(sd)])
    back = ldm_checkpoint_from_sd(read_tensors(sd), tiny_arch(), sampler=tiny_module_configs()["sampler"])
    return sd, write_torch_file(back, tmp_path / "back.ckpt")


def check_export_samples_alike(tmp_path: Path, device: str) -> None:
    """Images of the read-back export on `device` against the CPU's, float32 both."""
    _, back = exported(tmp_path)
    prompts, seeds = ["a red circle", "a green square", "a blue triangle"], [0, 1, 2]
    on_cpu = Text2Image.from_checkpoint(back, device="cpu")(prompts, seeds)
    on_device = Text2Image.from_checkpoint(back, device=device)(prompts, seeds)
    assert on_cpu.shape == on_device.shape == (3, 3, 32, 32) and on_cpu.std() > 0.01
    assert (on_device - on_cpu).abs().max() <= 1e-3  # images in [0, 1]


def check_diffusers_runs_the_export_as_ours(tmp_path: Path, device: str) -> None:
    """diffusers' UNet2DConditionModel from the exported file on `device` against our U-Net on the CPU."""
    diffusers = pytest.importorskip("diffusers")
    sd, back = exported(tmp_path)
    config = dict(config=str(tmp_path / "tiny-diffusers"), subfolder="unet", local_files_only=True)
    theirs = diffusers.UNet2DConditionModel.from_single_file(str(sd), **config).to(device).eval()
    ours = load_latent_diffusion(back).model.diffusion_model
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 16, ours.context_dim, generator=g)
    timesteps = torch.tensor([17, 803])
    with torch.no_grad():
        expected = ours(x, timesteps, context)
        actual = theirs(x.to(device), timesteps.to(device), encoder_hidden_states=context.to(device)).sample
    assert max_relative_error(actual, expected) <= 1e-4


def test_exported_model_samples_on_cuda_as_on_the_cpu(tmp_path, strict_fp32):
    check_export_samples_alike(tmp_path, "cuda")


def test_diffusers_runs_the_export_on_cuda_as_ours_on_the_cpu(tmp_path, strict_fp32, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_diffusers_runs_the_export_as_ours(tmp_path, "cuda")
