"""LatentDiffusionModule: stage 2 in Lightning, the optimisation wired onto ``LatentDiffusion``.

The networks, the batch-to-loss path and the EMA live in the core ``ldm.diffusion.latent_diffusion``;
this class adds the Lightning pieces: the training and validation steps' logging, AdamW with the
warm-up/cosine schedule (``ldm.optim``), the EMA update after each optimizer step, validation on
the EMA weights, and the stage tag in checkpoints. Its state dict is ``LatentDiffusion``'s, so
checkpoints have SD's keys and load into the core class for sampling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import FSDPStrategy

from ldm.acceleration import accelerate_
from ldm.diffusion.latent_diffusion import LatentDiffusion
from ldm.optim import adamw, lr_multiplier
from ldm.training.precision import fused_allowed
from ldm.training.step_seed import sample_generators

STAGE = "diffusion"
"""Value of ``checkpoint["ldm_stage"]`` in checkpoints written by this module."""


class LatentDiffusionModule(LatentDiffusion, pl.LightningModule):
    """Trains a text-conditioned U-Net on the latents of a frozen autoencoder."""

    def __init__(self, **configs: Any):
        super().__init__(**configs)
        self.save_hyperparameters(self.checkpoint_hparams)
        self._validation_weights = contextlib.ExitStack()
        self.step_skipped = False  # set by NonFiniteGuard: no EMA update after a skipped step
        self.seed = 0  # the run's seed (train.py sets it): per-sample draws come from (seed, step, sample)
        self.loss_terms: dict[str, torch.Tensor] = {}

    def accelerate(self, *, compile: bool = False, channels_last: bool = False) -> None:
        """trainer.compile / trainer.channels_last: for the U-Net, the network that trains (in place;
        the EMA copy, used for validation and sampling weights only, stays as it is)."""
        accelerate_(self.model.diffusion_model, compile=compile, channels_last=channels_last)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        generators = None  # the global generator when stepped by hand, without a Trainer
        if self._trainer is not None:
            generators = sample_generators(
                self.trainer, self.seed, len(batch["caption"]), batch_idx, self.device
            )
        loss = self.loss(batch, train=True, generator=generators)
        self.loss_terms = {"train/loss": loss.detach()}
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA update (not after a step skipped for non-finite gradients)."""
        self.step_skipped = False
        super().optimizer_step(*args, **kwargs)
        if self.model_ema is not None and not self.step_skipped:
            self.model_ema.update(self.model.diffusion_model)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        """Lightning's clipping, except under FSDP: there the root FSDP module clips by the norm of all
        ranks' shards together (Lightning's FSDP precision refuses to clip by norm)."""
        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(f"trainer.strategy=fsdp clips by norm only, not {gradient_clip_algorithm!r}")
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_validation_epoch_start(self) -> None:
        self._validation_weights.enter_context(self.ema_scope())

    def on_validation_epoch_end(self) -> None:
        self._validation_weights.close()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # A fixed generator per batch makes validation losses comparable across steps and runs.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self.loss(batch, train=False, generator=generator)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["caption"]))

    def configure_optimizers(self) -> Any:
        cfg = self.diffusion_config
        groups = [{"params": list(self.model.diffusion_model.parameters()), "lr": cfg.learning_rate}]
        if self.conditioner_config.trainable:
            lr = self.conditioner_config.learning_rate or cfg.learning_rate
            trainable = [p for p in self.cond_stage_model.parameters() if p.requires_grad]
            groups.append({"params": trainable, "lr": lr})
        trainer = self._trainer
        allow_fused = fused_allowed(trainer, trainer.gradient_clip_val if trainer is not None else None)
        optimizer = adamw(
            groups, allow_fused=allow_fused, lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_schedule())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_schedule(self) -> Callable[[int], float]:
        """The learning-rate multiplier per optimizer step: warm-up, then constant or cosine to max_steps."""
        cfg = self.diffusion_config
        return partial(
            lr_multiplier, warmup_steps=cfg.warmup_steps, schedule=cfg.lr_schedule, max_steps=cfg.max_steps
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ldm_stage"] = STAGE
