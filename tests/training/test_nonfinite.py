"""ldm/training/nonfinite.py: steps with non-finite gradients are skipped on every rank together."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import pytorch_lightning as pl
import torch

from ldm.training.diffusion_module import LatentDiffusionModule
from ldm.training.nonfinite import NonFiniteGuard, NonFiniteTraining, gradients_finite
from ldm.training.step_seed import StepSeed
from ldm.weights.checkpoint import read_checkpoint
from tests.conftest import ROOT, quiet_trainer, run_cli, tiny_module_configs

STEPS, PLANT_AT = 6, 3


def images(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, 32, 32, generator=g) * 2 - 1, "caption": f"shape {i}"} for i in range(n)]


class PlantNaN(pl.Callback):
    """Makes one gradient NaN after the backward pass (after DDP's all-reduce) at the given steps, on one rank."""

    def __init__(self, steps: set[int], rank: int = 0):
        self.steps, self.rank = steps, rank

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step in self.steps and trainer.global_rank == self.rank:
            next(pl_module.model.diffusion_model.parameters()).grad.view(-1)[0] = float("nan")


def _state(trainer, module) -> dict:
    return copy.deepcopy(
        {
            "weights": module.model.diffusion_model.state_dict(),
            "ema": module.model_ema.state_dict(),
            "optimizer": trainer.optimizers[0].state_dict()["state"],
        }
    )


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


class Snapshots(pl.Callback):
    """The U-Net weights, EMA and optimizer state before and after every step."""

    def __init__(self):
        self.before, self.after = {}, {}

    def on_train_batch_start(self, trainer, pl_module, *args):
        self.before[trainer.global_step] = _state(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.after[trainer.global_step - 1] = _state(trainer, pl_module)

    def changes(self) -> dict[str, bool]:
        """Whether each part changed in the planted step, and in the step before it (which is not planted)."""
        return {
            f"{part}_changed_at_{step}": not _equal(self.before[step][part], self.after[step][part])
            for step in (PLANT_AT - 1, PLANT_AT)
            for part in ("weights", "ema", "optimizer")
        }


def fit(tmp_path, plant: set[int], max_bad_steps: int = 3) -> tuple[NonFiniteGuard, Snapshots, pl.Trainer]:
    configs = tiny_module_configs()
    configs["diffusion"] = dataclasses.replace(configs["diffusion"], ema=True)
    torch.manual_seed(0)
    module = LatentDiffusionModule(**configs)
    guard, snapshots = NonFiniteGuard(max_bad_steps, tmp_path / "checkpoints"), Snapshots()
    trainer = quiet_trainer(
        max_steps=STEPS,
        gradient_clip_val=1.0,
        default_root_dir=tmp_path,
        callbacks=[StepSeed(0), guard, PlantNaN(plant), snapshots],
    )
    trainer.fit(module, torch.utils.data.DataLoader(images(16), batch_size=2))
    return guard, snapshots, trainer


def test_a_nan_gradient_skips_its_step_only(tmp_path):
    guard, snapshots, trainer = fit(tmp_path, {PLANT_AT})
    changes = snapshots.changes()
    assert guard.skipped == 1 and trainer.global_step == STEPS  # the run went on to the end
    assert not any(changes[f"{p}_changed_at_{PLANT_AT}"] for p in ("weights", "ema", "optimizer"))
    assert all(changes[f"{p}_changed_at_{PLANT_AT - 1}"] for p in ("weights", "ema", "optimizer"))


def test_too_many_bad_steps_in_a_row_stop_with_a_checkpoint_from_before_them(tmp_path):
    with pytest.raises(
        NonFiniteTraining, match=r"3 training steps in a row had non-finite gradients \(steps 2-4"
    ):
        fit(tmp_path, {2, 3, 4}, max_bad_steps=3)
    (saved,) = (tmp_path / "checkpoints").glob("nonfinite-step-*.ckpt")
    state = read_checkpoint(saved)["state_dict"]
    # fit() raised; the weights before step 2 come from an identical run without the NaNs.
    _, snapshots, _ = fit(tmp_path / "reference", set(), max_bad_steps=3)
    before = snapshots.before[2]["weights"]
    assert all(torch.equal(state[f"model.diffusion_model.{k}"], v) for k, v in before.items())


def test_gradients_finite():
    p = torch.nn.Parameter(torch.zeros(3))
    assert gradients_finite([p])  # no gradient yet
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    assert gradients_finite([p])
    p.grad[1] = float("inf")
    assert not gradients_finite([p])


@pytest.mark.slow
def test_a_nan_on_one_of_two_ranks_is_skipped_by_both(tmp_path):
    result = run_cli([str(ROOT / "tests" / "training" / "nonfinite_ddp.py"), str(tmp_path)])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for rank in (0, 1):
        seen = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert seen["skipped"] == 1 and seen["global_step"] == STEPS
        for part in ("weights", "ema", "optimizer"):
            assert not seen[f"{part}_changed_at_{PLANT_AT}"], (rank, part)
            assert seen[f"{part}_changed_at_{PLANT_AT - 1}"], (rank, part)
