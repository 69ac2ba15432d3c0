"""DDP is the same training: 2 processes with batch B and 1 process with batch 2B, fed the same global
batches, give the same weights and EMA after N steps (gradient clipping on), because each sample's
random draws come from (seed, step, sample index), not from the process that holds it."""

from __future__ import annotations

import pytest
import torch

from ldm.pipeline import Text2Image
from ldm.weights.checkpoint import read_checkpoint
from tests.conftest import ROOT, run_cli

SCRIPT = ROOT / "tests" / "training" / "ddp_equivalence.py"


def trained(path) -> dict[str, torch.Tensor]:
    """The U-Net and its EMA from a checkpoint the script wrote."""
    state = read_checkpoint(path)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(("model.", "model_ema."))}


@pytest.mark.slow
def test_two_processes_with_batch_b_equal_one_with_batch_2b(tmp_path):
    for mode in ("single", "ddp"):
        result = run_cli([str(SCRIPT), mode, str(tmp_path)])
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    single, ddp = trained(tmp_path / "single.ckpt"), trained(tmp_path / "ddp.ckpt")
    initial = torch.load(tmp_path / "initial.pt", weights_only=True)
    assert single.keys() == ddp.keys() and any(k.startswith("model_ema.") for k in single)
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6, msg=key)
    # Not trivially equal: the weights moved (clipped steps of lr 1e-4 move them by about 1e-4 each).
    moved = max(
        (single[k] - initial[k[len("model.") :]]).abs().max().item() for k in single if k.startswith("model.")
    )
    assert moved > 1e-5


@pytest.mark.gpu  # run by scripts/gpu_check.sh (pytest -m gpu); one GPU is enough
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="Lightning's FSDP strategy runs on CUDA devices only"
)
def test_fsdp_trains_as_one_process_and_its_checkpoint_samples(tmp_path):  # pragma: no cover - GPU only
    for mode in ("single", "fsdp"):
        result = run_cli([str(SCRIPT), mode, str(tmp_path), "gpu"])
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    single, fsdp = trained(tmp_path / "single.ckpt"), trained(tmp_path / "fsdp.ckpt")
    for key in fsdp:  # FSDP keeps no EMA: the U-Net only
        torch.testing.assert_close(fsdp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    images = Text2Image.from_checkpoint(tmp_path / "fsdp.ckpt", device="cpu")(["a shape 1"], [0])
    assert images.shape == (1, 3, 32, 32)
