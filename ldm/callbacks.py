"""Lightning callbacks: sample grids during stage-2 training."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torchvision.utils import make_grid, save_image

from ldm.pipeline import Text2Image

log = logging.getLogger(__name__)


class SampleGridCallback(pl.Callback):
    """Every `every_n_steps` (and at the end of training) samples `prompts` and saves a grid PNG.

    Each row is one prompt, each column one seed, so grids from different steps compare directly.
    Files go to ``<root dir>/images/samples-stepNNNNNN.png``; W&B runs also get the image.
    """

    def __init__(self, prompts: Sequence[str], n_per_prompt: int = 4, every_n_steps: int = 0, seed: int = 0):
        if not prompts:
            raise ValueError("SampleGridCallback needs at least one prompt")
        self.prompts = list(prompts)
        self.n_per_prompt = n_per_prompt
        self.every_n_steps = every_n_steps
        self.seed = seed
        self.last_path: Path | None = None
        self._last_step = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.log_grid(trainer, pl_module)

    @torch.no_grad()
    def log_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._last_step = trainer.global_step
        was_training = pl_module.training
        pl_module.eval()
        prompts = [p for p in self.prompts for _ in range(self.n_per_prompt)]
        seeds = [self.seed + i for _ in self.prompts for i in range(self.n_per_prompt)]
        ema_scope = getattr(pl_module, "ema_scope", contextlib.nullcontext)
        with ema_scope():  # the EMA weights when the module keeps them
            images = Text2Image.from_module(pl_module)(prompts, seeds)
        pl_module.train(was_training)
        path = Path(trainer.default_root_dir) / "images" / f"samples-step{trainer.global_step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(images, path, nrow=self.n_per_prompt, padding=1)
        self.last_path = path
        log.info("sample grid at step %d: %s", trainer.global_step, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                grid = make_grid(images, nrow=self.n_per_prompt, padding=1)
                logger.log_image(
                    "samples", [grid], step=trainer.global_step, caption=[" | ".join(self.prompts)]
                )
