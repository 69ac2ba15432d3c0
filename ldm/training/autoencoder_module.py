"""Stage 1 in Lightning: trains ``KLAutoencoder`` with ``AutoencoderLoss`` (reconstruction,
LPIPS, KL, PatchGAN); wiring only.

Manual optimization: one Adam for the autoencoder (and the learned logvar), and, when the
discriminator can start within ``max_steps``, a second for the discriminator, stepped after it
from ``disc_start`` on. Only the autoencoder's optimizer counts towards ``global_step``, so
``max_steps`` and ``disc_start`` count autoencoder updates (as LDM). Gradients are clipped here,
since Lightning's ``gradient_clip_val`` does not apply under manual optimization.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchvision.utils import save_image

from ldm.acceleration import channels_last_, compile_in_place
from ldm.autoencoder.discriminator import NLayerDiscriminator
from ldm.autoencoder.latent_stats import CHECKPOINT_KEY, compute_latent_stats
from ldm.autoencoder.losses import AutoencoderLoss
from ldm.autoencoder.model import KLAutoencoder
from ldm.autoencoder.perceptual import load_lpips
from ldm.config import AutoencoderConfig
from ldm.data.decode import model_inputs
from ldm.optim import adam, check_lr_schedule, lr_multiplier
from ldm.training.nonfinite import skip_if_nonfinite
from ldm.training.precision import fused_allowed
from ldm.training.step_seed import sample_generators

logger = logging.getLogger(__name__)

STAGE = "autoencoder"
"""Value of ``checkpoint["ldm_stage"]`` in checkpoints written by this module."""
MAX_IMAGES = 8
"""Inputs (and their reconstructions) in the validation image grid."""


def to_unit_range(images: Tensor) -> Tensor:
    """Map images from [-1, 1] to [0, 1], clamping what falls outside."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def uses_discriminator(config: AutoencoderConfig) -> bool:
    """Whether stage 1 builds a discriminator: it has a weight and starts within max_steps."""
    return config.disc_weight > 0 and config.disc_factor > 0 and config.disc_start < config.max_steps


class AutoencoderModule(pl.LightningModule):
    """Trains the KL autoencoder on ``batch["image"]`` (B, C, H, W in [-1, 1]).

    `gradient_clip_val` (the trainer's) applies when ``config.gradient_clip_val`` is null.
    """

    def __init__(self, config: AutoencoderConfig, gradient_clip_val: Optional[float] = None) -> None:
        super().__init__()
        self.config = config
        self.automatic_optimization = False
        self.gradient_clip_val = (
            config.gradient_clip_val if config.gradient_clip_val is not None else gradient_clip_val
        )
        self.autoencoder = KLAutoencoder.from_config(config)
        perceptual = None
        if config.perceptual_weight > 0:
            perceptual = load_lpips(config.perceptual_weights, config.vgg_weights)
        discriminator = None
        if uses_discriminator(config):
            discriminator = NLayerDiscriminator(
                config.in_channels, config.disc_channels, config.disc_num_layers, config.disc_norm
            )
        self.loss = AutoencoderLoss(
            config.kl_weight,
            reconstruction=config.reconstruction,
            perceptual=perceptual,
            perceptual_weight=config.perceptual_weight,
            discriminator=discriminator,
            disc_start=config.disc_start,
            disc_weight=config.disc_weight,
            disc_factor=config.disc_factor,
            disc_loss=config.disc_loss,
            clipped=config.clipped_loss,
        )
        check_lr_schedule(config.lr_schedule)
        if config.latent_stats_batches < 0:
            raise ValueError(f"latent_stats_batches must be >= 0, got {config.latent_stats_batches}")
        self.latent_stats: Optional[dict[str, Any]] = None
        self.seed = 0  # the run's seed (train.py sets it): per-sample draws come from (seed, step, sample)
        self._fid: list[Any] = []  # torchmetrics FID, kept out of the state dict
        # Plain dicts, lists and numbers only, so checkpoints load with weights_only=True.
        self.save_hyperparameters({"autoencoder": dataclasses.asdict(config)})

    def accelerate(self, *, compile: bool = False, channels_last: bool = False) -> None:
        """trainer.compile / trainer.channels_last for stage 1, in place. Channels-last: the autoencoder
        and the loss's networks (LPIPS, discriminator), which take its reconstructions. Compile: the
        encoder and the decoder (the posterior's per-sample draws between them stay eager)."""
        if channels_last:
            self.to(memory_format=torch.channels_last)
            channels_last_(self.autoencoder)
        if compile:
            compile_in_place(self.autoencoder.encoder)
            compile_in_place(self.autoencoder.decoder)

    def _clip(self, optimizer: Any) -> None:
        if self.gradient_clip_val:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm"
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One autoencoder update, then (from disc_start) one discriminator update on the same batch."""
        optimizers = self.optimizers()
        opt_ae, opt_disc = optimizers if isinstance(optimizers, list) else (optimizers, None)
        x = batch["image"]
        step = self.global_step
        generators = None  # the global generator when stepped by hand, without a Trainer
        if self._trainer is not None:
            generators = sample_generators(self.trainer, self.seed, x.shape[0], batch_idx, self.device)
        reconstructions, posterior = self.autoencoder(x, sample_posterior=True, generator=generators)
        loss, log = self.loss.generator_loss(x, reconstructions, posterior, self.autoencoder.last_layer, step)
        self.loss_terms = {f"train/{k}": v for k, v in log.items()}  # named in NonFiniteGuard's warning
        opt_ae.zero_grad()
        self.manual_backward(loss)
        self._clip(opt_ae)
        opt_ae.step()
        schedule = self.lr_schedulers()  # manual optimization: the schedule steps with the optimizer
        if schedule is not None:
            schedule.step()
        if opt_disc is not None and self.loss.discriminator_active(step):
            d_loss, d_log = self.loss.discriminator_step_loss(x, reconstructions)
            opt_disc.zero_grad()
            self.manual_backward(d_loss)
            self._clip(opt_disc)
            # The raw optimizer: a LightningOptimizer step would count towards global_step. It
            # bypasses the hooks, so the non-finite check that NonFiniteGuard makes is made here.
            disc_parameters = list(self.loss.discriminator.parameters())
            if self._trainer is None or not skip_if_nonfinite(self.trainer, disc_parameters):
                opt_disc.optimizer.step()
            log.update(d_log)
        batch_size = x.shape[0]
        self.log("train/loss", log["loss"], prog_bar=True, batch_size=batch_size)
        for name in ("rec_loss", "kl_loss", "logvar"):
            self.log(f"train/{name}", log[name], batch_size=batch_size)
        if self.loss.perceptual_loss is not None:
            self.log("train/p_loss", log["p_loss"], batch_size=batch_size)
        for name in ("g_loss", "d_weight", "d_loss", "logits_real", "logits_fake"):
            if name in log:
                self.log(f"train/{name}", log[name], batch_size=batch_size)
        return loss.detach()

    def on_fit_start(self) -> None:
        """Refuse fp16 with a discriminator (its raw step bypasses the grad scaler); set up rFID."""
        precision = str(self.trainer.precision)
        if self.loss.discriminator is not None and precision.startswith("16"):
            raise ValueError("stage 1 with a discriminator supports 32-true and bf16-mixed, not 16-mixed")
        if self.config.fid_inception_weights is None:
            logger.info("rFID skipped: no Inception weights configured (autoencoder.fid_inception_weights)")
        elif not self._fid:
            from torchmetrics.image.fid import FrechetInceptionDistance

            fid = FrechetInceptionDistance(
                feature=2048, normalize=True, feature_extractor_weights_path=self.config.fid_inception_weights
            )
            self._fid.append(fid.to(self.device))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Reconstruct from the posterior mode, clipped; log the distance, L1, PSNR, SSIM; save a grid on batch 0."""
        x = batch["image"]
        # Measured as delivered: every decoded image is clipped to [-1, 1].
        reconstructions = self.autoencoder.decode(self.autoencoder.encode(x).mode()).clamp(-1, 1)
        batch_size = x.shape[0]
        l1 = torch.abs(x - reconstructions).mean()
        rec_loss = l1 if self.loss.reconstruction == "l1" else (x - reconstructions).square().mean()
        # PSNR and SSIM per image, averaged over the batch; Lightning then weights each batch by
        # its size, so the epoch value is the mean over validation images.
        real, fake = to_unit_range(x).float(), to_unit_range(reconstructions).float()
        psnr = peak_signal_noise_ratio(fake, real, data_range=1.0, dim=(1, 2, 3))
        ssim = structural_similarity_index_measure(fake, real, data_range=1.0)
        self.log("val/rec_loss", rec_loss, on_epoch=True, batch_size=batch_size)
        self.log("val/l1", l1, on_epoch=True, batch_size=batch_size)
        self.log("val/psnr", psnr, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log("val/ssim", ssim, on_epoch=True, batch_size=batch_size)
        if self._fid and not self.trainer.sanity_checking:
            self._fid[0].update(real, real=True)
            self._fid[0].update(fake, real=False)
        if batch_idx == 0 and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._save_reconstructions(x, reconstructions)

    def on_validation_epoch_end(self) -> None:
        """Log rFID over the epoch's validation images (when configured)."""
        if self._fid and not self.trainer.sanity_checking:
            self.log("val/rfid", self._fid[0].compute())
            self._fid[0].reset()

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

    def on_train_end(self) -> None:
        """Measure the latent statistics on validation batches; they go into the next checkpoint saved."""
        loaders = self.trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if self.config.latent_stats_batches == 0 or loader is None:
            return
        was_training = self.autoencoder.training
        self.autoencoder.eval()
        images = (model_inputs(batch)["image"] for batch in loader)
        self.latent_stats = compute_latent_stats(self.autoencoder, images, self.config.latent_stats_batches)
        self.autoencoder.train(was_training)
        logger.info(
            "latent statistics (%d images): scale factor %.4f, channel means %s, channel stds %s",
            self.latent_stats["num_images"],
            self.latent_stats["scale_factor"],
            [round(v, 3) for v in self.latent_stats["mean"]],
            [round(v, 3) for v in self.latent_stats["std"]],
        )

    def configure_optimizers(self) -> Any:
        """Adam over the autoencoder and the learned logvar, and Adam over the discriminator; betas (0.5, 0.9)
        as LDM; with lr_schedule=cosine, the autoencoder's rate decays to zero at max_steps."""
        parameters = list(self.autoencoder.parameters()) + [self.loss.logvar]
        allow_fused = fused_allowed(self._trainer, self.gradient_clip_val)
        opt_ae = adam(parameters, allow_fused=allow_fused, lr=self.config.learning_rate, betas=(0.5, 0.9))
        optimizers = [opt_ae]
        if self.loss.discriminator is not None:
            opt_disc = adam(
                list(self.loss.discriminator.parameters()),
                allow_fused=allow_fused,
                lr=self.config.learning_rate,
                betas=(0.5, 0.9),
            )
            optimizers.append(opt_disc)
        if self.config.lr_schedule == "constant":
            return optimizers[0] if len(optimizers) == 1 else optimizers
        schedule = partial(
            lr_multiplier, warmup_steps=0, schedule=self.config.lr_schedule, max_steps=self.config.max_steps
        )
        return optimizers, [torch.optim.lr_scheduler.LambdaLR(opt_ae, schedule)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Tag the checkpoint so that stage 2 can check what it is loading; keep the latent statistics."""
        checkpoint["ldm_stage"] = STAGE
        if self.latent_stats is not None:
            checkpoint[CHECKPOINT_KEY] = self.latent_stats

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the latent statistics of a resumed run."""
        self.latent_stats = checkpoint.get(CHECKPOINT_KEY)
