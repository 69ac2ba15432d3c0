"""Inpainter: images, masks (1 = redraw) and prompts -> the images with the masked part redrawn.

SD's inpainting pipeline: the mask (binarised at 0.5, and widened to whole latent cells unless the
model was trained with ``image_conditioning.mask_to_cells=false``) and the latent of the image with
its masked pixels blanked condition every denoising step of a chain started from pure noise
(``ldm.conditioning.inpainting``); classifier-free guidance drops the prompt only. The model is
asked to keep the unmasked part; by default nothing is pasted back, so what it keeps is what it
draws (what ``benchmarks/eval_inpaint.py`` measures). ``paste`` pastes the input back outside the mask
after decoding, optionally feathered (``paste_unmasked``), as AUTOMATIC1111's web UI does with its "mask
blur" and diffusers' ``apply_overlay``: the unmasked pixels are then the input's exactly, at the price of a
seam where the model's edge differs from the input's. Used by ``python -m ldm.sample inpaint``
(``scripts/inpaint.py``), the training sample grids and ``benchmarks/eval_inpaint.py``. Every image has
its own seed, as in ``Text2Image``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ldm.conditioning.inpainting import InpaintingConditioner, binary_masks, check_masks
from ldm.config import SamplerConfig
from ldm.pipeline import Text2Image, load_module
from ldm.samplers.noise import per_sample_generators
from ldm.upscaler import check_images


def feathered(masks: torch.Tensor, blur: float) -> torch.Tensor:
    """Binary masks (b, 1, H, W) blurred outward: 1 on the mask, a Gaussian of standard deviation `blur`
    pixels falling off outside it (edges replicated); `blur` 0 returns the masks."""
    if blur < 0:
        raise ValueError(f"the mask blur must be >= 0 pixels, got {blur:g}")
    if blur == 0:
        return masks
    radius = max(1, math.ceil(3 * blur))
    offsets = torch.arange(-radius, radius + 1, dtype=masks.dtype, device=masks.device)
    kernel = torch.exp(-(offsets**2) / (2 * blur**2))
    kernel = kernel / kernel.sum()
    blurred = F.pad(masks, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1))
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1))
    return torch.maximum(masks, blurred)


def paste_unmasked(
    results: torch.Tensor, images: torch.Tensor, masks: torch.Tensor, blur: float = 0.0
) -> torch.Tensor:
    """`results` [B, 3, H, W] with `images` (same shape) pasted back where `masks` [B, 1, H, W] is < 0.5
    (kept), blended over a Gaussian of `blur` pixels outside the mask (``feathered``; 0: a hard edge)."""
    weights = feathered(binary_masks(masks.to(results)), blur)
    return weights * results + (1 - weights) * images.to(results)


class Inpainter:
    """Redraws the masked part of images toward prompts with an inpainting model."""

    def __init__(self, pipe: Text2Image, conditioner: InpaintingConditioner):
        self.pipe = pipe
        self.conditioner = conditioner

    @classmethod
    def from_module(cls, module: nn.Module, compile: bool = False, cuda_graphs: bool = False) -> Inpainter:
        """From an inpainting ``LatentDiffusion`` (or its training module; shares its weights)."""
        if not isinstance(module.image_conditioner, InpaintingConditioner):
            task = module.image_conditioning.task
            raise ValueError(f"not an inpainting model (image_conditioning.task={task})")
        return cls(
            Text2Image.from_module(module, compile=compile, cuda_graphs=cuda_graphs), module.image_conditioner
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> Inpainter:
        """From an inpainting stage-2 checkpoint, on `device` (default: CUDA when available)."""
        module = load_module(path, device, task="inpainting")
        return cls.from_module(module, compile=compile, cuda_graphs=cuda_graphs)

    @property
    def sampler(self) -> SamplerConfig:
        """The checkpoint's sampler."""
        return self.pipe.sampler

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the latents the U-Net sees (the posterior mode, normalized and scaled)."""
        return self.pipe.encode((images + 1) / 2)

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        sampler: Optional[SamplerConfig] = None,
        negative_prompt: str = "",
        callback: Optional[Callable[[dict], None]] = None,
        paste: Optional[float] = None,
    ) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1]: `images` (same shape and range) with the parts where `masks`
        [B, 1, H, W] is >= 0.5 redrawn, one per (image, mask, prompt, seed). `paste`: None, the decoded
        images as they are; a number of pixels, the input pasted back outside the mask with that mask blur
        (``paste_unmasked``)."""
        sampler = sampler or self.pipe.sampler
        if paste is not None and not paste >= 0:
            raise ValueError(f"the mask blur of the paste must be >= 0 pixels, got {paste:g}")
        check_images(images)
        check_masks(masks, images)
        if masks.min() < 0 or masks.max() > 1:
            raise ValueError("expected mask values in [0, 1]")
        if not len(prompts) == len(seeds) == images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images, {len(prompts)} prompts and {len(seeds)} seeds")
        height, width = self.pipe.check_request(sampler, *images.shape[-2:], negative_prompt)
        sigmas = self.pipe.sigmas(sampler)
        generators = per_sample_generators(seeds)
        x = self.pipe.initial_noise(generators, height, width, sigmas[0])
        device_images = images.to(self.pipe.device, torch.float32) * 2 - 1
        image = self.conditioner(device_images, binary_masks(masks.float()), self.encode)
        latents = self.pipe.denoise(
            x, sigmas, prompts, generators, sampler, negative_prompt, callback, image=image
        )
        decoded = self.pipe.decode(latents)
        return decoded if paste is None else paste_unmasked(decoded, images, masks, paste)
