"""On CUDA in bf16-mixed: the debug preset trains both stages through ``python -m ldm.train``, and the
denoising loss under bf16 autocast is the float32 loss to bf16's rounding.

The float32 reference of the second test is the same module on the CPU with the same per-sample
generators (CPU generators: the noise, timesteps and caption dropout are the same numbers on both).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
import yaml

from ldm.pipeline import Text2Image
from ldm.samplers.noise import per_sample_generators
from ldm.training.diffusion_module import LatentDiffusionModule
from ldm.weights.checkpoint import read_checkpoint
from tests.conftest import run_cli, tiny_module_configs
from tests.gpu.conftest import requires_cuda

pytestmark = requires_cuda

STEPS = 8
"""Optimizer steps of each stage (the debug preset checkpoints every 2)."""


def train_losses(run_dir: Path, stage: str) -> dict[int, float]:
    """step -> train/loss of a stage, from its CSV log."""
    with open(run_dir / "logs" / stage / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def check_debug_preset_trains_in_bf16(tmp_path: Path, accelerator: str) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            "-m",
            "ldm.train",
            "experiment=debug",
            f"hydra.run.dir={run_dir}",
            f"data.root={tmp_path / 'data'}",
            "trainer.enable_progress_bar=false",
            f"trainer.accelerator={accelerator}",
            "trainer.devices=1",
            "trainer.precision=bf16-mixed",
            f"autoencoder.max_steps={STEPS}",
            f"diffusion.max_steps={STEPS}",
        ]
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
    for stage in ("autoencoder", "diffusion"):
        losses = train_losses(run_dir, stage)
        assert sorted(losses) == list(range(STEPS)), (stage, losses)
        assert all(math.isfinite(v) and v > 0 for v in losses.values()), (stage, losses)
    # Stage 1's reconstruction loss falls fast (fp32 on the CPU: 3781 at step 0, 1248-1431 at steps 5-7);
    # stage 2's moves by a few percent in 8 steps, less than its batch-to-batch noise: finite only.
    autoencoder = train_losses(run_dir, "autoencoder")
    assert min(autoencoder[s] for s in range(STEPS - 3, STEPS)) < 0.6 * autoencoder[0], autoencoder

    ae = read_checkpoint(run_dir / "autoencoder" / "checkpoints" / "last.ckpt", expected_stage="autoencoder")
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", expected_stage="diffusion")
    assert ae["global_step"] == checkpoint["global_step"] == STEPS
    # bf16-mixed keeps float32 master weights: the checkpoint holds them, all finite.
    unet = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.diffusion_model.")}
    assert unet and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in unet.values())

    # The checkpoint loads and samples on the GPU as on the CPU (float32 both).
    prompts, seeds = ["a red circle", "a blue square"], [3, 4]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    on_cpu = Text2Image.from_checkpoint(ckpt, device="cpu")(prompts, seeds)
    on_device = Text2Image.from_checkpoint(ckpt, device="cuda" if accelerator == "gpu" else "cpu")(
        prompts, seeds
    )
    assert on_cpu.shape == on_device.shape == (2, 3, 32, 32) and on_cpu.std() > 0.01
    assert (on_device - on_cpu).abs().max() <= 1e-3  # images in [0, 1]


def check_bf16_loss_is_the_float32_loss(device: str) -> None:
    """The training loss of one batch and its U-Net gradients: bf16 autocast on `device` against
    float32 on the CPU, with the same generators."""
    torch.manual_seed(0)
    module = LatentDiffusionModule(**tiny_module_configs()).train()
    with torch.no_grad():  # no zero-initialised layer: every gradient non-trivial
        for p in module.model.diffusion_model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.rand(8, 3, 32, 32, generator=g) * 2 - 1,
        "caption": [f"a shape {i}" for i in range(8)],
    }

    def loss_and_gradients(dtype: torch.dtype, where: str) -> tuple[float, torch.Tensor]:
        module.to(where).zero_grad()
        inputs = {"image": batch["image"].to(where), "caption": batch["caption"]}
        generators = per_sample_generators(range(100, 108))  # CPU: the same draws on any device
        with torch.autocast(where, dtype, enabled=dtype != torch.float32):
            loss = module.loss(inputs, train=True, generator=generators)
        loss.backward()
        grads = [p.grad.flatten().cpu() for p in module.model.diffusion_model.parameters()]
        return loss.item(), torch.cat(grads)

    loss32, grad32 = loss_and_gradients(torch.float32, "cpu")
    loss16, grad16 = loss_and_gradients(torch.bfloat16, device)
    assert 0.1 < loss32 < 10
    assert abs(loss16 - loss32) <= 2e-2 * loss32, (loss16, loss32)
    cosine = torch.nn.functional.cosine_similarity(grad16.double(), grad32.double(), dim=0).item()
    assert cosine >= 0.99, cosine


def test_debug_preset_trains_both_stages_in_bf16_on_cuda(tmp_path, strict_fp32):
    check_debug_preset_trains_in_bf16(tmp_path, "gpu")


def test_bf16_loss_on_cuda_is_the_float32_loss(strict_fp32):
    check_bf16_loss_is_the_float32_loss("cuda")
