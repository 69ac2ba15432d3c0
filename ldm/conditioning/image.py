"""Which image a model is conditioned on (``image_conditioning.task``): checked against the networks, built.

none               text-to-image: the U-Net takes the latent alone
super_resolution   + the noise-augmented low-resolution image, 3 channels, and its noise level as a
                   class label (SD x4 upscaler; ``ldm.conditioning.low_resolution``)
inpainting         + the mask and the masked image's latent, 1 + latent channels (SD inpainting;
                   ``ldm.conditioning.inpainting``)
"""

from __future__ import annotations

from typing import Optional, Union

from ldm.conditioning.inpainting import InpaintingConditioner
from ldm.conditioning.low_resolution import NOISE_LEVELS, LowResolutionConditioner
from ldm.conditioning.masks import check_mask_shares
from ldm.config import IMAGE_CONDITIONING_TASKS, AutoencoderConfig, ImageConditioningConfig, UNetConfig

ImageConditioner = Union[LowResolutionConditioner, InpaintingConditioner]
"""What builds a task's ImageConditioning from a batch's images."""

TASK_NAMES = {"none": "text-to-image", "super_resolution": "super-resolution", "inpainting": "inpainting"}
"""How errors name the kind of a model."""


def autoencoder_factor(autoencoder: AutoencoderConfig) -> int:
    """The autoencoder's spatial factor f = 2 ** (levels - 1)."""
    return 2 ** (len(autoencoder.ch_mult) - 1)


def concat_channels(task: str, autoencoder: AutoencoderConfig) -> int:
    """How many channels `task` concatenates to the latent."""
    image, latent = autoencoder.in_channels, autoencoder.embed_dim
    return {"none": 0, "super_resolution": image, "inpainting": 1 + latent}[task]


def check_image_conditioning(
    cfg: ImageConditioningConfig, denoiser: UNetConfig, autoencoder: AutoencoderConfig
) -> None:
    """Raise a one-line ValueError where the task, the U-Net's input and the autoencoder do not fit."""
    if cfg.task not in IMAGE_CONDITIONING_TASKS:
        raise ValueError(
            f"unknown image_conditioning.task '{cfg.task}'; available: {', '.join(IMAGE_CONDITIONING_TASKS)}"
        )
    latent, extra = autoencoder.embed_dim, concat_channels(cfg.task, autoencoder)
    if denoiser.concat_channels != extra:
        raise ValueError(
            f"image_conditioning.task={cfg.task} concatenates {extra} channels to the latent: set "
            f"denoiser.concat_channels={extra} (got {denoiser.concat_channels})"
        )
    if denoiser.in_channels != latent + extra or denoiser.out_channels != latent:
        raise ValueError(
            f"denoiser in/out channels ({denoiser.in_channels}/{denoiser.out_channels}) must be the "
            f"autoencoder's latent channels (autoencoder.embed_dim={latent}) + concat_channels ({extra}) / "
            "the latent channels"
        )
    if cfg.task == "super_resolution":
        _check_super_resolution(cfg, denoiser, autoencoder)
    elif denoiser.num_classes is not None:
        raise ValueError(
            f"denoiser.num_classes embeds the low-resolution input's noise level of super_resolution; "
            f"image_conditioning.task={cfg.task} has none: set it to null"
        )
    if cfg.task == "inpainting":
        check_mask_shares(cfg.mask_full, cfg.mask_empty, cfg.mask_strokes)


def _check_super_resolution(
    cfg: ImageConditioningConfig, denoiser: UNetConfig, autoencoder: AutoencoderConfig
) -> None:
    f = autoencoder_factor(autoencoder)
    if cfg.upscale != f:
        raise ValueError(
            f"image_conditioning.upscale={cfg.upscale} must equal the autoencoder's factor {f}: the "
            "low-resolution image is concatenated to the latent, so they must be the same size"
        )
    if not 1 <= cfg.max_noise_level <= NOISE_LEVELS:
        raise ValueError(
            f"image_conditioning.max_noise_level must be in [1, {NOISE_LEVELS}], got {cfg.max_noise_level}"
        )
    if not 0 <= cfg.noise_level < NOISE_LEVELS:
        raise ValueError(
            f"image_conditioning.noise_level must be in [0, {NOISE_LEVELS - 1}], got {cfg.noise_level}"
        )
    if denoiser.num_classes is None or denoiser.num_classes < NOISE_LEVELS:
        raise ValueError(
            f"super_resolution embeds the noise level (0 to {NOISE_LEVELS - 1}) as a class label: set "
            f"denoiser.num_classes={NOISE_LEVELS} (got {denoiser.num_classes})"
        )


def build_image_conditioner(
    cfg: ImageConditioningConfig, denoiser: UNetConfig, autoencoder: AutoencoderConfig
) -> Optional[ImageConditioner]:
    """The conditioner of `cfg.task` (None for text-to-image), after checking that the networks fit it."""
    check_image_conditioning(cfg, denoiser, autoencoder)
    if cfg.task == "super_resolution":
        return LowResolutionConditioner(cfg.upscale, cfg.max_noise_level)
    if cfg.task == "inpainting":
        return InpaintingConditioner(
            factor=autoencoder_factor(autoencoder),
            mask_full=cfg.mask_full,
            mask_empty=cfg.mask_empty,
            mask_strokes=cfg.mask_strokes,
            mask_to_cells=cfg.mask_to_cells,
            border_weight=cfg.border_weight,
        )
    return None
