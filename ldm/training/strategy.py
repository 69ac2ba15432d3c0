"""How the processes of a run share the work: Lightning's strategy and cluster environment from the config.

``trainer.strategy``: ``auto`` (Lightning's choice: DDP when there is more than one process), ``ddp``,
or ``fsdp``. The frozen networks take no part in either: DDP synchronises gradients only, and the
autoencoder and text encoder have none; FSDP is told to leave them unsharded (``ignored_modules``)
and wraps the U-Net's residual and transformer blocks, each its own unit, in bf16 when the run is
bf16. FSDP shards the U-Net of stage 2 (and distillation); stage 1, an autoencoder with its
discriminator, has no U-Net and trains under DDP. FSDP runs on CUDA and on CPU processes (gloo).
Under SLURM, Lightning's environment is used with its own requeue
handler off: the signal handling of ``ldm.training.preemption`` saves at a step boundary instead,
and ``scripts/slurm/train.sbatch`` requeues the job.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy, Strategy
from torch import nn

from ldm.config import TrainerConfig
from ldm.denoiser.attention import SpatialTransformer
from ldm.denoiser.blocks import ResBlock
from ldm.diffusion.latent_diffusion import LatentDiffusion, discrete_denoiser

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


class ShardedDataParallel(FSDPStrategy):
    """Lightning's FSDP strategy, which also runs on CPU processes.

    PyTorch's FSDP runs on the CPU (gloo) when it is handed the CPU device; Lightning hands it the
    device's index, which a CPU device lacks, and FSDP then asks for an accelerator. On CUDA this is
    Lightning's strategy unchanged. (Lightning refuses ``accelerator=cpu`` for its own class only.)
    """

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **self.kwargs,
        )


def build_strategy(t: TrainerConfig, module: nn.Module, precision: str) -> str | Strategy:
    """The Lightning strategy of `t.strategy` for `module` (a string Lightning resolves, or a Strategy)."""
    if t.strategy == "auto":
        return "auto"
    shardable = isinstance(module, LatentDiffusion) and not hasattr(module, "distill")
    if t.strategy == "fsdp" and not shardable:
        log.info(
            "trainer.strategy=fsdp shards stage 2's U-Net only: %s trains under DDP", type(module).__name__
        )
    if t.strategy == "ddp" or not shardable:
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
    blocks = sum(isinstance(m, tuple(FSDP_UNITS)) for m in module.modules())
    log.info(
        "FSDP: the U-Net's %d blocks sharded (%s), %d frozen networks left whole",
        blocks,
        t.fsdp_sharding,
        len(ignored),
    )
    return ShardedDataParallel(
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


@contextlib.contextmanager
def unsharded_denoiser(trainer: pl.Trainer, module: LatentDiffusion) -> Iterator[None]:
    """Within the block, on global rank 0, ``module.model`` holds all of the denoiser's weights, for
    sampling there alone. It does already, except under FSDP, whose units each hold a shard and
    gather the rest in a forward pass that every rank runs: there every rank takes part in gathering
    the full weights, and rank 0 samples with an unsharded copy. Every rank must enter."""
    if not isinstance(trainer.strategy, FSDPStrategy):
        yield
        return
    state = trainer.strategy.lightning_module_state_dict()  # a collective; rank 0 gets every tensor
    if not trainer.is_global_zero:
        yield
        return
    prefix = "model.diffusion_model."
    copy = discrete_denoiser(module.denoiser_config, module.diffusion_config)
    copy.diffusion_model.load_state_dict(
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    )
    sharded = module.model
    module.model = copy.to(module.device).eval()
    try:
        yield
    finally:
        module.model = sharded
