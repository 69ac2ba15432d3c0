"""DDP is the same training: 2 processes with batch B and 1 process with batch 2B, fed the same global
batches, give the same weights and EMA after N steps (gradient clipping on), because each sample's
random draws come from (seed, step, sample index), not from the process that holds it."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ROOT, run_cli

SCRIPT = ROOT / "tests" / "training" / "ddp_equivalence.py"


@pytest.mark.slow
def test_two_processes_with_batch_b_equal_one_with_batch_2b(tmp_path):
    for mode in ("single", "ddp"):
        result = run_cli([str(SCRIPT), mode, str(tmp_path)])
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    initial = torch.load(tmp_path / "initial.pt", weights_only=True)
    assert single.keys() == ddp.keys() and any(k.startswith("model_ema.") for k in single)
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6, msg=key)
    # Not trivially equal: the weights moved (clipped steps of lr 1e-4 move them by about 1e-4 each).
    moved = max(
        (single[k] - initial[k[len("model.") :]]).abs().max().item() for k in single if k.startswith("model.")
    )
    assert moved > 1e-5
