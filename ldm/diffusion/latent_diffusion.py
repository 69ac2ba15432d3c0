"""LatentDiffusion: the networks of a text-to-image latent diffusion model, and how a batch reaches them.

A frozen autoencoder encodes images to latents (times the scale factor, or normalized per
channel with ``diffusion.latent_normalization=channel``), a text encoder (frozen
unless ``conditioner.trainable``) embeds captions, and the U-Net, wrapped as a denoiser of sigma
(``DiscreteDenoiser``), predicts the noise (or v, or x0). With ``diffusion.ema`` an exponential
moving average of the U-Net is kept beside it. Batches of cached latents carry the posterior's
``moments`` instead of images, and may carry each caption's text-encoder states as ``context``;
then the encoders they stand for do not run. An image-conditioned model (``image_conditioning``:
super-resolution or inpainting) also builds, from each batch's images, the image that is
concatenated to the U-Net's input (``ldm.conditioning.image``). A distilled student also carries
what it was distilled for (``distillation``: ``ldm.samplers.distilled.DistilledSampling``), which
sampling obeys.

Attribute names follow Stable Diffusion's checkpoints, so the state dict has SD's keys:
``first_stage_model.*``, ``cond_stage_model.model.*``, ``model.diffusion_model.*``,
``scale_factor``; the average is ``model_ema.module.*``. Plain PyTorch: sampling builds this from a
checkpoint, and the training layer's ``LatentDiffusionModule`` adds the optimisation to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any, Optional

import torch
from torch import nn

from ldm.autoencoder.distributions import DiagonalGaussianDistribution
from ldm.autoencoder.model import KLAutoencoder
from ldm.conditioning.concat import Conditioning, Context, ImageConditioning
from ldm.conditioning.dropout import drop_captions, drop_contexts, kept_captions
from ldm.conditioning.image import build_image_conditioner
from ldm.conditioning.inpainting import InpaintingConditioner
from ldm.conditioning.text import OpenCLIPTextEncoder, without_pretrained
from ldm.config import (
    AutoencoderConfig,
    ConditionerConfig,
    DiffusionConfig,
    ImageConditioningConfig,
    SamplerConfig,
    UNetConfig,
)
from ldm.denoiser.unet import UNetModel
from ldm.diffusion.channel_normalization import MEAN_KEY, STD_KEY, normalize
from ldm.diffusion.ema import ExponentialMovingAverage
from ldm.diffusion.objective import DiffusionObjective
from ldm.diffusion.parametrization import DiscreteDenoiser
from ldm.diffusion.schedules import alphas_cumprod_from_config
from ldm.optim import check_lr_schedule
from ldm.samplers.distilled import DistilledSampling
from ldm.samplers.noise import Generators


def discrete_denoiser(denoiser: UNetConfig, diffusion: DiffusionConfig) -> DiscreteDenoiser:
    """A new U-Net of architecture `denoiser`, wrapped for the schedule and parametrisation of `diffusion`."""
    alphas_cumprod = alphas_cumprod_from_config(diffusion)
    return DiscreteDenoiser(UNetModel.from_config(denoiser), alphas_cumprod, diffusion.parameterization)


class LatentDiffusion(nn.Module):
    """The autoencoder, text encoder and denoising U-Net (and its EMA) of one model, built from configs."""

    def __init__(
        self,
        *,
        autoencoder: AutoencoderConfig,
        denoiser: UNetConfig,
        conditioner: ConditionerConfig,
        diffusion: DiffusionConfig,
        sampler: SamplerConfig,
        image_size: int,
        image_conditioning: Optional[ImageConditioningConfig] = None,
        distillation: Optional[DistilledSampling] = None,
    ):
        super().__init__()
        image_conditioning = image_conditioning or ImageConditioningConfig()
        # Checks the U-Net's input channels against the autoencoder's latent and the task's image.
        self.image_conditioner = build_image_conditioner(image_conditioning, denoiser, autoencoder)
        check_lr_schedule(diffusion.lr_schedule)
        # Plain dicts only, so that checkpoints load with torch.load(weights_only=True).
        self.checkpoint_hparams: dict[str, Any] = {
            "autoencoder": dataclasses.asdict(autoencoder),
            "denoiser": dataclasses.asdict(denoiser),
            "conditioner": dataclasses.asdict(conditioner),
            "diffusion": dataclasses.asdict(diffusion),
            "sampler": dataclasses.asdict(sampler),
            "image_size": image_size,
            "image_conditioning": dataclasses.asdict(image_conditioning),
        }
        self.image_conditioning = image_conditioning
        if distillation is not None:
            self.checkpoint_hparams["distillation"] = distillation.as_dict()
        self.distillation = distillation
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
        self.objective = DiffusionObjective.from_config(diffusion, alphas_cumprod)
        self.denoiser_config = denoiser
        self.model = discrete_denoiser(denoiser, diffusion)
        self.model_ema: Optional[ExponentialMovingAverage] = None
        if diffusion.ema:
            self.model_ema = ExponentialMovingAverage(
                self.model.diffusion_model, diffusion.ema_decay, diffusion.ema_warmup, diffusion.ema_power
            )
        self.register_buffer("scale_factor", torch.tensor(diffusion.scale_factor or 1.0))
        if diffusion.latent_normalization == "channel":  # set from stage 1's statistics before training
            self.register_buffer(MEAN_KEY, torch.zeros(autoencoder.embed_dim))
            self.register_buffer(STD_KEY, torch.ones(autoencoder.embed_dim))
        self._empty_context: Optional[torch.Tensor] = None

    @staticmethod
    def configs_from_hparams(
        hparams: dict[str, Any],
        *,
        diffusion: Optional[DiffusionConfig] = None,
        sampler: Optional[SamplerConfig] = None,
    ) -> dict[str, Any]:
        """The constructor's keyword arguments from a checkpoint's hyper_parameters.

        The text encoder is built without its pretrained weights (the checkpoint holds them), so
        that loading a checkpoint needs neither the open_clip cache nor a download. ``diffusion``
        and ``sampler`` replace the checkpoint's training settings (a resumed run's config).
        """
        distillation = hparams.get("distillation")
        return dict(
            autoencoder=AutoencoderConfig(**hparams["autoencoder"]),
            denoiser=UNetConfig(**hparams["denoiser"]),
            conditioner=without_pretrained(ConditionerConfig(**hparams["conditioner"])),
            diffusion=diffusion or DiffusionConfig(**hparams["diffusion"]),
            sampler=sampler or SamplerConfig(**hparams["sampler"]),
            image_size=hparams["image_size"],
            image_conditioning=ImageConditioningConfig(**hparams.get("image_conditioning", {})),
            distillation=DistilledSampling.from_dict(distillation) if distillation is not None else None,
        )

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any], **replacements: Any) -> LatentDiffusion:
        """Rebuild the networks (random weights) from a checkpoint's hyper_parameters."""
        return cls(**cls.configs_from_hparams(hparams, **replacements))

    def train(self, mode: bool = True) -> LatentDiffusion:
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

    def latents_of(
        self, batch: dict[str, Any], *, sample: bool, generator: Generators = None
    ) -> torch.Tensor:
        """Scaled latents of a batch: a fresh posterior sample (training) or the posterior mean."""
        posterior = self.posterior_of(batch)
        return self.diffusion_latents(posterior.sample(generator) if sample else posterior.mode())

    def channel_statistics(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(mean, std) per latent channel when latents are normalized per channel, else None."""
        if not hasattr(self, MEAN_KEY):
            return None
        return getattr(self, MEAN_KEY), getattr(self, STD_KEY)

    def diffusion_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The autoencoder's latents as the U-Net sees them: normalized per channel (if so configured),
        times the scale factor."""
        stats = self.channel_statistics()
        return (z if stats is None else normalize(z, *stats)) * self.scale_factor

    def empty_context(self) -> torch.Tensor:
        """The frozen text encoder's states of the empty prompt, 1 x T x D (computed once per device)."""
        if self.cond_stage_model.trainable:
            raise ValueError("a trainable text encoder has no fixed empty-prompt context")
        device = self.scale_factor.device
        if self._empty_context is None or self._empty_context.device != device:
            with torch.no_grad():
                self._empty_context = self.cond_stage_model([""])
        return self._empty_context

    def context_of(self, batch: dict[str, Any], *, drop: bool, generator: Generators = None) -> torch.Tensor:
        """Per-token text states of a batch's captions, B x T x D: its cached ``context`` or the text
        encoder's; with `drop`, some are the empty prompt's (the same draws either way)."""
        captions = list(batch["caption"])
        keep = kept_captions(len(captions), self.caption_dropout, generator) if drop else None
        if "context" not in batch:
            return self.cond_stage_model(drop_captions(captions, keep))
        context = batch["context"].float()
        if keep is None or keep.all():
            return context
        return drop_contexts(context, keep, self.empty_context())

    def image_conditioning_of(self, batch: dict[str, Any], generator: Generators = None) -> ImageConditioning:
        """The image an image-conditioned model is trained on, from a batch's ``image``: the noise-augmented
        low-resolution image (super-resolution) or a random mask and the masked image's latent
        (inpainting; the latent is the posterior mean's, as when sampling)."""
        if "image" not in batch:
            raise ValueError(
                f"image_conditioning.task={self.image_conditioning.task} builds its conditioning from "
                "images: batches of cached latents cannot train it"
            )
        images = batch["image"]
        if isinstance(self.image_conditioner, InpaintingConditioner):
            return self.image_conditioner.for_training(images, self.encode_mean, generator)
        return self.image_conditioner.for_training(images, generator)

    @torch.no_grad()
    def encode_mean(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the diffusion latents of their posterior means."""
        return self.diffusion_latents(self.first_stage_model.encode(images).mode())

    def conditioning_of(self, batch: dict[str, Any], *, drop: bool, generator: Generators = None) -> Context:
        """What the U-Net is conditioned on for a batch: the text states (``context_of``; `drop`: caption
        dropout), with the image of an image-conditioned model (never dropped)."""
        context = self.context_of(batch, drop=drop, generator=generator)
        if self.image_conditioner is None:
            return context
        return Conditioning(context, self.image_conditioning_of(batch, generator))

    def loss(self, batch: dict[str, Any], *, train: bool, generator: Generators = None) -> torch.Tensor:
        """The denoising loss of a batch: fresh posterior samples and caption dropout when `train`,
        posterior means and all captions otherwise. Random draws come from `generator`: None (the
        global one), one for the batch, or one per sample (which makes each sample's draws
        independent of the batch it is in: the same on 1 process with batch 2B as on 2 with B)."""
        z = self.latents_of(batch, sample=train, generator=generator)
        context = self.conditioning_of(batch, drop=train, generator=generator)
        weights = None
        if isinstance(self.image_conditioner, InpaintingConditioner) and isinstance(context, Conditioning):
            weights = self.image_conditioner.loss_weights(context.image)
        return self.objective(
            self.model.diffusion_model, z, context, generator=generator, element_weights=weights
        )
