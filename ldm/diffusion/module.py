"""LatentDiffusionModule: the Lightning wiring of stage 2.

A frozen autoencoder encodes images to latents (times the scale factor), a text encoder (frozen
unless ``conditioner.trainable``) embeds captions (some dropped to the empty prompt, for
classifier-free guidance), and the U-Net learns the denoising objective. Batches of cached latents
carry the posterior's ``moments`` instead of images, and may carry each caption's text-encoder
states as ``context``; then the encoders they stand for do not run. With ``diffusion.ema``
an exponential moving average of the U-Net is updated after every optimizer step and used for
validation and sample grids. Attribute names follow Stable Diffusion's checkpoints:
``first_stage_model``, ``cond_stage_model``, ``model.diffusion_model``, ``scale_factor``; the
average is ``model_ema.module.*``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from ldm.autoencoder.distributions import DiagonalGaussianDistribution
from ldm.autoencoder.model import KLAutoencoder
from ldm.conditioning.text import OpenCLIPTextEncoder, without_pretrained
from ldm.config import AutoencoderConfig, ConditionerConfig, DiffusionConfig, SamplerConfig, UNetConfig
from ldm.denoiser.unet import UNetModel
from ldm.diffusion.ema import ExponentialMovingAverage
from ldm.diffusion.objective import DiffusionObjective
from ldm.diffusion.parametrization import DiscreteDenoiser
from ldm.diffusion.schedules import alphas_cumprod_from_config
from ldm.optim import adamw, fused_allowed

LR_SCHEDULES = ("constant", "cosine")


class LatentDiffusionModule(pl.LightningModule):
    """Trains a text-conditioned U-Net on the latents of a frozen autoencoder."""

    def __init__(
        self,
        *,
        autoencoder: AutoencoderConfig,
        denoiser: UNetConfig,
        conditioner: ConditionerConfig,
        diffusion: DiffusionConfig,
        sampler: SamplerConfig,
        image_size: int,
    ):
        super().__init__()
        if denoiser.in_channels != autoencoder.embed_dim or denoiser.out_channels != autoencoder.embed_dim:
            raise ValueError(
                f"denoiser in/out channels ({denoiser.in_channels}/{denoiser.out_channels}) must equal the "
                f"autoencoder's latent channels (autoencoder.embed_dim={autoencoder.embed_dim})"
            )
        if diffusion.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"unknown lr_schedule '{diffusion.lr_schedule}'; available: {', '.join(LR_SCHEDULES)}"
            )
        # Plain dicts only, so that checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "autoencoder": dataclasses.asdict(autoencoder),
                "denoiser": dataclasses.asdict(denoiser),
                "conditioner": dataclasses.asdict(conditioner),
                "diffusion": dataclasses.asdict(diffusion),
                "sampler": dataclasses.asdict(sampler),
                "image_size": image_size,
            }
        )
        self.diffusion_config = diffusion
        self.conditioner_config = conditioner
        self.sampler_config = sampler
        self.caption_dropout = conditioner.caption_dropout
        self.image_size = image_size

        self.first_stage_model = KLAutoencoder.from_config(autoencoder).requires_grad_(False).eval()
        self.cond_stage_model = OpenCLIPTextEncoder(conditioner)
        if denoiser.context_dim != self.cond_stage_model.width:
            raise ValueError(
                f"denoiser.context_dim={denoiser.context_dim} but the text encoder's width is "
                f"{self.cond_stage_model.width}; set them equal"
            )
        alphas_cumprod = alphas_cumprod_from_config(diffusion)
        self.objective = DiffusionObjective(
            alphas_cumprod,
            diffusion.parameterization,
            loss_weighting=diffusion.loss_weighting,
            min_snr_gamma=diffusion.min_snr_gamma,
            offset_noise=diffusion.offset_noise,
        )
        self.model = DiscreteDenoiser(
            UNetModel.from_config(denoiser), alphas_cumprod, diffusion.parameterization
        )
        self.model_ema: Optional[ExponentialMovingAverage] = None
        if diffusion.ema:
            self.model_ema = ExponentialMovingAverage(
                self.model.diffusion_model, diffusion.ema_decay, diffusion.ema_warmup, diffusion.ema_power
            )
        self.register_buffer("scale_factor", torch.tensor(diffusion.scale_factor or 1.0))
        self._empty_context: Optional[torch.Tensor] = None
        self._validation_weights = contextlib.ExitStack()

    @classmethod
    def from_hparams(
        cls,
        hparams: dict[str, Any],
        *,
        diffusion: Optional[DiffusionConfig] = None,
        sampler: Optional[SamplerConfig] = None,
    ) -> LatentDiffusionModule:
        """Rebuild the module (random weights) from a checkpoint's hyper_parameters.

        The text encoder is built without its pretrained weights (the checkpoint holds them), so
        that loading a checkpoint needs neither the open_clip cache nor a download. ``diffusion``
        and ``sampler`` replace the checkpoint's training settings (a resumed run's config).
        """
        return cls(
            autoencoder=AutoencoderConfig(**hparams["autoencoder"]),
            denoiser=UNetConfig(**hparams["denoiser"]),
            conditioner=without_pretrained(ConditionerConfig(**hparams["conditioner"])),
            diffusion=diffusion or DiffusionConfig(**hparams["diffusion"]),
            sampler=sampler or SamplerConfig(**hparams["sampler"]),
            image_size=hparams["image_size"],
        )

    def train(self, mode: bool = True) -> LatentDiffusionModule:
        """The autoencoder stays frozen in eval mode (and the text encoder unless trainable)."""
        super().train(mode)
        self.first_stage_model.eval()
        return self

    @contextlib.contextmanager
    def ema_scope(self) -> Iterator[None]:
        """Within the block the U-Net holds the EMA weights (nothing changes without EMA)."""
        if self.model_ema is None:
            yield
            return
        with self.model_ema.average_weights(self.model.diffusion_model):
            yield

    @torch.no_grad()
    def posterior_of(self, batch: dict[str, Any]) -> DiagonalGaussianDistribution:
        """q(z | x) of a batch: from its cached ``moments`` (B x 2C x h x w) or by encoding its ``image``."""
        if "moments" in batch:
            return DiagonalGaussianDistribution(batch["moments"].float())
        return self.first_stage_model.encode(batch["image"])

    def latents_of(self, batch: dict[str, Any], *, sample: bool) -> torch.Tensor:
        """Scaled latents of a batch: a fresh posterior sample (training) or the posterior mean."""
        posterior = self.posterior_of(batch)
        return (posterior.sample() if sample else posterior.mode()) * self.scale_factor

    def kept_captions(self, n: int) -> Optional[torch.Tensor]:
        """Which of `n` training captions to keep (bool, n): each is dropped with probability
        caption_dropout; None without dropout."""
        if self.caption_dropout <= 0:
            return None
        return torch.rand(n) >= self.caption_dropout

    def empty_context(self) -> torch.Tensor:
        """The frozen text encoder's states of the empty prompt, 1 x T x D (computed once)."""
        if self.cond_stage_model.trainable:
            raise ValueError("a trainable text encoder has no fixed empty-prompt context")
        if self._empty_context is None or self._empty_context.device != self.device:
            with torch.no_grad():
                self._empty_context = self.cond_stage_model([""])
        return self._empty_context

    def context_of(self, batch: dict[str, Any], *, drop: bool) -> torch.Tensor:
        """Per-token text states of a batch's captions, B x T x D: its cached ``context`` or the text
        encoder's; with `drop`, some are the empty prompt's (the same draws either way)."""
        captions = list(batch["caption"])
        keep = self.kept_captions(len(captions)) if drop else None
        if "context" not in batch:
            if keep is not None:
                captions = [c if k else "" for c, k in zip(captions, keep.tolist())]
            return self.cond_stage_model(captions)
        context = batch["context"].float()
        if keep is not None and not keep.all():
            empty = self.empty_context().to(context.dtype)
            context = torch.where(keep.to(context.device)[:, None, None], context, empty)
        return context

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        z = self.latents_of(batch, sample=True)
        context = self.context_of(batch, drop=True)
        loss = self.objective(self.model.diffusion_model, z, context)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA update."""
        super().optimizer_step(*args, **kwargs)
        if self.model_ema is not None:
            self.model_ema.update(self.model.diffusion_model)

    def on_validation_epoch_start(self) -> None:
        self._validation_weights.enter_context(self.ema_scope())

    def on_validation_epoch_end(self) -> None:
        self._validation_weights.close()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # A fixed generator per batch makes validation losses comparable across steps and runs.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        z = self.latents_of(batch, sample=False)
        context = self.context_of(batch, drop=False)
        loss = self.objective(self.model.diffusion_model, z, context, generator=generator)
        self.log("val/loss", loss, prog_bar=True, batch_size=z.shape[0])

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

        def lr_lambda(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            if cfg.lr_schedule == "cosine":
                progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
                return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ldm_stage"] = "diffusion"
