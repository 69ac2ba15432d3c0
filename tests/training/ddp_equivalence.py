"""Run by tests/training/test_ddp_equivalence.py: N steps of a tiny LatentDiffusionModule fed the same
global batches, either by 1 process with batch 2B or by 2 gloo processes with batch B each (rank r
gets the r-th half of every global batch). Rank 0 saves the U-Net and its EMA to OUT/<mode>.pt.
(Not a test module: Lightning's DDP launcher re-runs this file.)"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.conftest

from ldm.config import TrainerConfig  # noqa: E402
from ldm.training.diffusion_module import LatentDiffusionModule  # noqa: E402
from ldm.training.step_seed import StepSeed  # noqa: E402
from ldm.training.strategy import build_strategy  # noqa: E402
from tests.conftest import quiet_trainer, tiny_module_configs  # noqa: E402

B, STEPS = 2, 4


class HalfBatches(pl.LightningDataModule):
    """Global batch s is samples [2Bs, 2B(s+1)); a rank of W gets its 1/W share of each, in order."""

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        samples = [
            {"image": torch.rand(3, 32, 32, generator=g) * 2 - 1, "caption": f"a shape {i % 5}"}
            for i in range(2 * B * STEPS)
        ]
        rank, world = self.trainer.global_rank, self.trainer.world_size
        per_rank = 2 * B // world
        mine = [samples[s * 2 * B + rank * per_rank + j] for s in range(STEPS) for j in range(per_rank)]
        return torch.utils.data.DataLoader(mine, batch_size=per_rank, shuffle=False)


def main(mode: str, out: Path, accelerator: str = "cpu") -> None:
    """`mode`: single (1 process), ddp (2 processes) or fsdp (up to 2 GPUs: Lightning's FSDP needs CUDA)."""
    configs = tiny_module_configs()
    ema = mode != "fsdp"  # FSDP keeps no EMA yet
    configs["diffusion"] = dataclasses.replace(
        configs["diffusion"], ema=ema, ema_warmup="none", ema_decay=0.5
    )
    torch.manual_seed(0)
    module = LatentDiffusionModule(**configs)
    strategy = build_strategy(TrainerConfig(strategy=mode if mode != "single" else "auto"), module, "32-true")
    devices = {"single": 1, "ddp": 2, "fsdp": min(2, torch.cuda.device_count())}[mode]
    trainer = quiet_trainer(
        strategy=strategy,
        accelerator=accelerator,
        devices=devices,
        max_steps=STEPS,
        gradient_clip_val=0.05,  # small enough to clip every step
        use_distributed_sampler=False,
        callbacks=[StepSeed(0)],
    )
    initial = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer.fit(module, HalfBatches())
    if trainer.global_rank == 0 and mode == "single":
        torch.save(initial, out / "initial.pt")
    trainer.save_checkpoint(out / f"{mode}.ckpt")  # every rank takes part; a full state dict under FSDP


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:])
