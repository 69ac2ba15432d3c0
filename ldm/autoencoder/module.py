"""Stage 1 in Lightning: trains ``KLAutoencoder`` with ``ReconstructionKLLoss``; wiring only."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio
from torchvision.utils import save_image

from ldm.autoencoder.losses import ReconstructionKLLoss
from ldm.autoencoder.model import KLAutoencoder
from ldm.config import AutoencoderConfig

logger = logging.getLogger(__name__)

STAGE = "autoencoder"
"""Value of ``checkpoint["ldm_stage"]`` in checkpoints written by this module."""
MAX_IMAGES = 8
"""Inputs (and their reconstructions) in the validation image grid."""


def to_unit_range(images: Tensor) -> Tensor:
    """Map images from [-1, 1] to [0, 1], clamping what falls outside."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


class AutoencoderModule(pl.LightningModule):
    """Trains the KL autoencoder on ``batch["image"]`` (B, C, H, W in [-1, 1])."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = KLAutoencoder.from_config(config)
        self.loss = ReconstructionKLLoss(config.kl_weight, reconstruction=config.reconstruction)
        # Plain dicts, lists and numbers only, so checkpoints load with weights_only=True.
        self.save_hyperparameters({"autoencoder": dataclasses.asdict(config)})

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Reconstruct through a sampled latent and return the loss."""
        x = batch["image"]
        reconstructions, posterior = self.autoencoder(x, sample_posterior=True)
        loss, log = self.loss(x, reconstructions, posterior)
        batch_size = x.shape[0]
        self.log("train/loss", log["loss"], prog_bar=True, batch_size=batch_size)
        for name in ("rec_loss", "kl_loss", "logvar"):
            self.log(f"train/{name}", log[name], batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Reconstruct from the posterior mode; log the reconstruction distance, L1 and PSNR; save a grid on batch 0."""
        x = batch["image"]
        reconstructions = self.autoencoder.decode(self.autoencoder.encode(x).mode())
        batch_size = x.shape[0]
        l1 = torch.abs(x - reconstructions).mean()
        rec_loss = l1 if self.loss.reconstruction == "l1" else (x - reconstructions).square().mean()
        # PSNR per image, averaged over the batch; Lightning then weights each batch by its size,
        # so the epoch value is the mean over validation images.
        psnr = peak_signal_noise_ratio(
            to_unit_range(reconstructions), to_unit_range(x), data_range=1.0, dim=(1, 2, 3)
        )
        self.log("val/rec_loss", rec_loss, on_epoch=True, batch_size=batch_size)
        self.log("val/l1", l1, on_epoch=True, batch_size=batch_size)
        self.log("val/psnr", psnr, on_epoch=True, prog_bar=True, batch_size=batch_size)
        if batch_idx == 0 and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._save_reconstructions(x, reconstructions)

    def _save_reconstructions(self, inputs: Tensor, reconstructions: Tensor) -> None:
        n = min(MAX_IMAGES, inputs.shape[0])
        grid = torch.cat([inputs[:n], reconstructions[:n]])  # inputs on top, reconstructions below
        folder = Path(self.trainer.default_root_dir) / "images"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"reconstructions-step{self.global_step:06d}.png"
        save_image(to_unit_range(grid.detach().float().cpu()), path, nrow=n, padding=2)
        logger.info("saved reconstructions to %s", path)
        for experiment_logger in self.loggers:
            if isinstance(experiment_logger, WandbLogger):
                experiment_logger.log_image(
                    key="val/reconstructions", images=[str(path)], step=self.global_step
                )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the autoencoder and the loss's learned logvar, betas (0.5, 0.9) as LDM."""
        parameters = list(self.autoencoder.parameters()) + list(self.loss.parameters())
        return torch.optim.Adam(parameters, lr=self.config.learning_rate, betas=(0.5, 0.9))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Tag the checkpoint so that stage 2 can check what it is loading."""
        checkpoint["ldm_stage"] = STAGE
