"""Run by tests/training/test_nonfinite.py: two gloo ranks train a tiny LatentDiffusionModule, a NaN
is planted in one gradient of rank 1 only, after DDP's all-reduce, at step PLANT_AT; each rank
writes what it saw to OUT/rank<r>.pt. (Not a test module: Lightning's DDP launcher re-runs this file.)"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.conftest

from ldm.training.diffusion_module import LatentDiffusionModule  # noqa: E402
from ldm.training.nonfinite import NonFiniteGuard  # noqa: E402
from ldm.training.step_seed import StepSeed  # noqa: E402
from tests.conftest import quiet_trainer, tiny_module_configs  # noqa: E402
from tests.training.test_nonfinite import PLANT_AT, STEPS, PlantNaN, Snapshots, images  # noqa: E402


def main(out: Path) -> None:
    configs = tiny_module_configs()
    configs["diffusion"] = dataclasses.replace(configs["diffusion"], ema=True)
    torch.manual_seed(0)
    module = LatentDiffusionModule(**configs)
    guard = NonFiniteGuard(max_bad_steps=3)
    snapshots = Snapshots()
    trainer = quiet_trainer(
        strategy="ddp",
        devices=2,
        max_steps=STEPS,
        gradient_clip_val=1.0,
        callbacks=[StepSeed(0), guard, PlantNaN({PLANT_AT}, rank=1), snapshots],
    )
    trainer.fit(module, torch.utils.data.DataLoader(images(16), batch_size=2))
    result = {"skipped": guard.skipped, "global_step": trainer.global_step, **snapshots.changes()}
    torch.save(result, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
