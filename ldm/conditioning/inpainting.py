"""Inpainting conditioning (SD inpainting): the mask and the latent of the image with the masked part blanked.

SD's inpainting models concatenate to the noisy latent (4 channels) the mask, resized to the
latent's size (1 channel, nearest neighbour, 1 = redraw), and the latent of the masked image (4
channels): the image with its masked pixels set to 0 (mid-grey in [-1, 1]), encoded by the same
autoencoder and scaled like the diffusion latents. 9 input channels in all, in that order; a
text-to-image model is fine-tuned into this layout with the 5 new input weights zero-initialised
(``ldm.weights.sd.widen_input_conv``). Training draws random masks (``ldm.conditioning.masks``).

Where a mask's edge cuts through a latent cell, SD's nearest-neighbour resize marks the cell by its
top-left pixel alone: a cell whose top-left pixel is kept counts as kept although some of its pixels
are blanked. Trained on such masks, a model learns that a kept cell beside a mask may hide content it
must invent, and draws some into the kept cells along every mask's edge. By default
(``image_conditioning.mask_to_cells``) the mask is first widened to whole cells (``cell_masks``): a
cell with any pixel to redraw is redrawn whole, so every cell marked kept is seen whole. Masks that
already follow the cells are unchanged by it; ``mask_to_cells=false`` is SD's resize exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ldm.conditioning.concat import ImageConditioning
from ldm.conditioning.masks import check_mask_shares, random_masks
from ldm.samplers.noise import Generators

Encoder = Callable[[Tensor], Tensor]
"""Images (b, 3, H, W) in [-1, 1] -> latents as the U-Net sees them (scaled, or normalized per channel)."""


def check_masks(masks: Tensor, images: Tensor) -> None:
    """Raise a one-line error unless `masks` is [B, 1, H, W], as large as `images` [B, 3, H, W]."""
    if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[0] != images.shape[0]:
        raise ValueError(f"expected masks of shape [{images.shape[0]}, 1, H, W], got {tuple(masks.shape)}")
    if masks.shape[-2:] != images.shape[-2:]:
        (mh, mw), (ih, iw) = masks.shape[-2:], images.shape[-2:]
        raise ValueError(f"the mask is {mw}x{mh} pixels but the image {iw}x{ih}: they must be the same size")


def binary_masks(masks: Tensor) -> Tensor:
    """Masks (b, 1, H, W) with values in [0, 1] as 0.0 / 1.0: 1 (redraw) where >= 0.5, as SD's scripts."""
    return (masks >= 0.5).to(masks.dtype)


def cell_masks(masks: Tensor, factor: int) -> Tensor:
    """Masks (b, 1, H, W) of 0 and 1 widened to whole `factor` x `factor` cells: a cell with any pixel
    to redraw (1) is 1 everywhere. H and W must be multiples of `factor`."""
    height, width = masks.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"a {width}x{height} mask does not divide into {factor}x{factor} latent cells")
    if factor == 1:
        return masks
    return F.interpolate(F.max_pool2d(masks, factor), scale_factor=factor, mode="nearest")


def masked_images(images: Tensor, masks: Tensor) -> Tensor:
    """Images in [-1, 1] with the pixels to redraw set to 0 (SD: ``image * (mask < 0.5)``)."""
    return images * (1 - masks)


class InpaintingConditioner:
    """Builds the U-Net's image conditioning from images and masks (see the module docstring)."""

    def __init__(
        self,
        *,
        factor: int,
        mask_full: float,
        mask_empty: float,
        mask_strokes: float,
        mask_to_cells: bool = True,
        border_weight: float = 1.0,
    ):
        check_mask_shares(mask_full, mask_empty, mask_strokes)
        if factor < 1:
            raise ValueError(f"the autoencoder's factor must be >= 1, got {factor}")
        if not border_weight > 0:
            raise ValueError(f"image_conditioning.border_weight must be > 0, got {border_weight}")
        self.factor = factor
        self.mask_to_cells = mask_to_cells
        self.border_weight = border_weight
        self.mask_full = mask_full
        self.mask_empty = mask_empty
        self.mask_strokes = mask_strokes

    def __call__(self, images: Tensor, masks: Tensor, encode: Encoder) -> ImageConditioning:
        """The conditioning of images (b, 3, H, W) in [-1, 1] with masks (b, 1, H, W) of 0 and 1."""
        check_masks(masks, images)
        masks = masks.to(images.device, images.dtype)
        if self.mask_to_cells:
            masks = cell_masks(masks, self.factor)
        latents = encode(masked_images(images, masks))
        small = F.interpolate(masks, size=latents.shape[-2:], mode="nearest")  # SD: interpolate, nearest
        return ImageConditioning(torch.cat([small.to(latents.dtype), latents], dim=1))  # mask, masked latent

    @torch.no_grad()
    def for_training(
        self, images: Tensor, encode: Encoder, generator: Generators = None
    ) -> ImageConditioning:
        """The conditioning of a training batch of images (b, 3, H, W) in [-1, 1], with random masks."""
        b, _, h, w = images.shape
        masks = random_masks(
            b,
            h,
            w,
            full=self.mask_full,
            empty=self.mask_empty,
            strokes=self.mask_strokes,
            generator=generator,
            device=images.device,
        )
        return self(images, masks, encode)

    def loss_weights(self, conditioning: ImageConditioning) -> Tensor | None:
        """Per-cell weights (b, 1, h, w) of the denoising loss: ``border_weight`` on the kept cells
        next to a masked one (in 8-neighbourhood), 1 elsewhere; None when ``border_weight`` is 1."""
        if self.border_weight == 1.0:
            return None
        masks = conditioning.concat[:, :1]
        border = F.max_pool2d(masks, 3, stride=1, padding=1) - masks
        return 1 + (self.border_weight - 1) * border
