"""How the processes of a run share the work: Lightning's strategy and cluster environment from the config.

``trainer.strategy``: ``auto`` (Lightning's choice: DDP when there is more than one process), ``ddp``,
or ``fsdp``. The frozen networks take no part in either: DDP synchronises gradients only, and the
autoencoder and text encoder have none; FSDP is told to leave them (and the EMA copy) unsharded
(``ignored_modules``) and wraps the U-Net's residual and transformer blocks, each its own unit, in
bf16 when the run is bf16. Under SLURM, Lightning's environment is used with its own requeue
handler off: the signal handling of ``ldm.training.preemption`` saves at a step boundary instead,
and ``scripts/slurm/train.sbatch`` requeues the job.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy, Strategy
from torch import nn

from ldm.config import TrainerConfig
from ldm.denoiser.attention import SpatialTransformer
from ldm.denoiser.blocks import ResBlock

log = logging.getLogger(__name__)

FSDP_SHARDING = {"full": "FULL_SHARD", "grad_op": "SHARD_GRAD_OP"}
FSDP_UNITS = {ResBlock, SpatialTransformer}
"""The U-Net blocks that FSDP wraps one by one (denoiser.use_checkpoint checkpoints inside them)."""


def frozen_modules(module: nn.Module) -> list[nn.Module]:
    """The parts of a training module that are not trained: the autoencoder of stage 2, and the text
    encoder unless it trains."""
    names = ("first_stage_model", "cond_stage_model")
    return [
        m
        for n in names
        if (m := getattr(module, n, None)) is not None and not any(p.requires_grad for p in m.parameters())
    ]


def build_strategy(t: TrainerConfig, module: nn.Module, precision: str) -> str | Strategy:
    """The Lightning strategy of `t.strategy` for `module` (a string Lightning resolves, or a Strategy)."""
    if t.strategy == "auto":
        return "auto"
    if t.strategy == "ddp":
        return DDPStrategy(find_unused_parameters=False)
    if getattr(module, "model_ema", None) is not None:
        raise ValueError("trainer.strategy=fsdp does not keep an EMA yet: set diffusion.ema=false or use ddp")
    ignored = frozen_modules(module)
    mixed: Optional[Any] = None
    if precision.startswith("bf16"):
        from torch.distributed.fsdp import MixedPrecision

        mixed = MixedPrecision(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, buffer_dtype=torch.float32
        )
    return FSDPStrategy(
        sharding_strategy=FSDP_SHARDING[t.fsdp_sharding],
        auto_wrap_policy=FSDP_UNITS,
        mixed_precision=mixed,
        ignored_modules=ignored,
        use_orig_params=True,
        state_dict_type="full",
    )


def cluster_plugins() -> list[Any]:
    """Under SLURM, Lightning's SLURM environment without its in-handler requeue (else nothing)."""
    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []
