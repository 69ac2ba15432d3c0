"""DDP and FSDP are the same training: 2 processes with batch B and 1 process with batch 2B, fed the
same global batches, give the same weights (and, under DDP, the same EMA) after N steps with gradient
clipping on, because each sample's random draws come from (seed, step, sample index), not from the
process that holds it. FSDP runs here on 2 CPU processes (gloo), the U-Net sharded between them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ldm.convert import main as convert
from ldm.pipeline import Text2Image
from ldm.weights.checkpoint import read_checkpoint
from tests.conftest import ROOT, run_cli

SCRIPT = ROOT / "tests" / "training" / "ddp_equivalence.py"


def trained(path) -> dict[str, torch.Tensor]:
    """The U-Net and its EMA from a checkpoint the script wrote."""
    state = read_checkpoint(path)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(("model.", "model_ema."))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The script's single, ddp, fsdp and fsdp_grad_op runs, on the CPU, in one folder."""
    out = tmp_path_factory.mktemp("distributed")
    for mode in ("single", "ddp", "fsdp", "fsdp_grad_op"):
        result = run_cli([str(SCRIPT), mode, str(out)])
        assert result.returncode == 0, mode + result.stdout[-2000:] + result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_with_batch_b_equal_one_with_batch_2b(runs):
    single, ddp = trained(runs / "single.ckpt"), trained(runs / "ddp.ckpt")
    initial = torch.load(runs / "initial.pt", weights_only=True)
    assert single.keys() == ddp.keys() and any(k.startswith("model_ema.") for k in single)
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6, msg=key)
    # Not trivially equal: the weights moved (clipped steps of lr 1e-4 move them by about 1e-4 each).
    moved = max(
        (single[k] - initial[k[len("model.") :]]).abs().max().item() for k in single if k.startswith("model.")
    )
    assert moved > 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp", "fsdp_grad_op"])
def test_fsdp_shards_the_unet_and_trains_as_ddp(runs, mode):
    ddp, fsdp = trained(runs / "ddp.ckpt"), trained(runs / f"{mode}.ckpt")
    unet = {k for k in ddp if k.startswith("model.")}
    assert fsdp.keys() == unet  # a full state dict with the usual keys; FSDP keeps no EMA
    for key in unet:
        torch.testing.assert_close(fsdp[key], ddp[key], rtol=1e-5, atol=1e-6, msg=key)
    # Sharded for real: each rank held half the U-Net between steps, in one unit per U-Net block
    # (the tiny U-Net has 9 ResBlocks and SpatialTransformers) plus the root.
    for rank in (0, 1):
        shard = json.loads((runs / f"{mode}-rank{rank}.json").read_text())
        assert shard["units"] == 10 and shard["held"] == shard["full"] // 2, shard
        # train/grad_norm is the norm over both ranks' shards: one process's norm of the whole batch.
        norm = json.loads((runs / f"{mode}-rank{rank}-grad-norm.json").read_text())
        single = json.loads((runs / "single-rank0-grad-norm.json").read_text())
        assert single > 0 and norm == pytest.approx(single, rel=1e-5)


@pytest.mark.slow
def test_an_fsdp_checkpoint_samples_and_converts_to_the_sd_layout(runs, tmp_path):
    ckpt = runs / "fsdp.ckpt"
    images = Text2Image.from_checkpoint(ckpt, device="cpu")(["a shape 1"], [0])
    assert images.shape == (1, 3, 32, 32) and images.float().std() > 0
    sd = tmp_path / "fsdp.safetensors"
    convert(["to-sd", "--ckpt", str(ckpt), "--out", str(sd), "--no-configs"])
    state, unet = load_file(str(sd)), trained(ckpt)
    for key, value in unet.items():  # SD's keys are ours: model.diffusion_model.*
        assert torch.equal(state[key], value), key


@pytest.mark.gpu  # run by scripts/gpu_check.sh (pytest -m gpu); one GPU is enough
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fsdp_on_cuda_trains_as_one_process(tmp_path):  # pragma: no cover - GPU only
    for mode in ("single", "fsdp"):
        result = run_cli([str(SCRIPT), mode, str(tmp_path), "gpu"])
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    single, fsdp = trained(tmp_path / "single.ckpt"), trained(tmp_path / "fsdp.ckpt")
    for key in fsdp:  # FSDP keeps no EMA: the U-Net only
        torch.testing.assert_close(fsdp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
