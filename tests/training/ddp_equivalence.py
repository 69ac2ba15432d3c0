"""Run by tests/training/test_ddp_equivalence.py: N steps of a tiny LatentDiffusionModule fed the same
global batches, either by 1 process with batch 2B or by 2 processes (DDP or FSDP; gloo on the CPU)
with batch B each (rank r gets the r-th half of every global batch). Saves OUT/<mode>.ckpt (and,
under FSDP, what each rank held of the U-Net to OUT/<mode>-rank<r>.json), and each rank's logged
gradient norm of the last step to OUT/<mode>-rank<r>-grad-norm.json.
(Not a test module: Lightning's DDP launcher re-runs this file.)"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for tests.conftest

from ldm.config import TrainerConfig  # noqa: E402
from ldm.training.diffusion_module import LatentDiffusionModule  # noqa: E402
from ldm.training.grad_norm import GradientNorm  # noqa: E402
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


MODES = ("single", "ddp", "fsdp", "fsdp_grad_op")
"""1 process; 2 with DDP; 2 with FSDP, fully sharded; 2 with FSDP sharding gradients and optimizer
state, the U-Net's blocks checkpointing their activations (denoiser.use_checkpoint)."""


def main(mode: str, out: Path, accelerator: str = "cpu") -> None:
    """One run of `mode` on `accelerator` (cpu: 2 gloo processes; gpu: up to 2 GPUs)."""
    configs = tiny_module_configs()
    fsdp = mode.startswith("fsdp")
    configs["diffusion"] = dataclasses.replace(
        configs["diffusion"],
        ema=not fsdp,
        ema_warmup="none",
        ema_decay=0.5,  # FSDP keeps no EMA yet
    )
    configs["denoiser"] = dataclasses.replace(configs["denoiser"], use_checkpoint=mode == "fsdp_grad_op")
    torch.manual_seed(0)
    module = LatentDiffusionModule(**configs)
    trainer_config = TrainerConfig(
        strategy="fsdp" if fsdp else mode if mode == "ddp" else "auto",
        fsdp_sharding="grad_op" if mode == "fsdp_grad_op" else "full",
    )
    strategy = build_strategy(trainer_config, module, "32-true")
    devices = 1 if mode == "single" else 2 if accelerator == "cpu" else min(2, torch.cuda.device_count())
    trainer = quiet_trainer(
        strategy=strategy,
        accelerator=accelerator,
        devices=devices,
        max_steps=STEPS,
        gradient_clip_val=0.05,  # small enough to clip every step
        use_distributed_sampler=False,
        callbacks=[StepSeed(0), GradientNorm()],
    )
    initial = {k: v.clone() for k, v in module.model.state_dict().items()}
    full = sum(p.numel() for p in module.model.parameters())
    trainer.fit(module, HalfBatches())
    norm = float(trainer.callback_metrics["train/grad_norm"])  # the last step's, before clipping
    (out / f"{mode}-rank{trainer.global_rank}-grad-norm.json").write_text(json.dumps(norm))
    if fsdp:  # what this rank holds of the U-Net between steps, and in how many FSDP units
        from torch.distributed.fsdp import FullyShardedDataParallel

        units = sum(isinstance(m, FullyShardedDataParallel) for m in trainer.strategy.model.modules())
        held = sum(p.numel() for p in module.model.parameters())
        shard = {"units": units, "held": held, "full": full}
        (out / f"{mode}-rank{trainer.global_rank}.json").write_text(json.dumps(shard))
    if trainer.global_rank == 0 and mode == "single":
        torch.save(initial, out / "initial.pt")
    trainer.save_checkpoint(out / f"{mode}.ckpt")  # every rank takes part; a full state dict under FSDP


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:])
