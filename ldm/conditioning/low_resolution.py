"""Super-resolution conditioning: the low-resolution image, noise-augmented, and its noise level.

SR3 (Saharia et al. 2022) conditions a diffusion model on the low-resolution image by
concatenation; Stable Diffusion's x4 upscaler does so in latent space, with an autoencoder whose
factor is the upscaling factor, so that the low-resolution RGB image is as large as the latent and
is concatenated to it as 3 more channels. Cascaded models (Ho et al. 2022, Sec. 4; Imagen) add
noise to that input during training at a random level l, which the U-Net is told (SD x4: as a
class label), so that it learns to tolerate what upsampled inputs look like; sampling picks l:

    lr_l = sqrt(alpha_bar_l) * lr + sqrt(1 - alpha_bar_l) * eps        (Ho et al. 2020, Eq. 4)

with SD x4's augmentation schedule (LDM's ``ImageConcatWithNoiseAugmentation``): betas linear in
sqrt(beta) from 1e-4 to 0.02 over 1000 levels, training levels drawn from [0, 350).
Downsampling is bicubic with antialiasing (``downsample``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.conditioning.concat import ImageConditioning
from ldm.diffusion.objective import q_sample, sample_timesteps
from ldm.diffusion.schedules import alphas_cumprod_from_betas, make_betas
from ldm.samplers.noise import Generators, randn_like

NOISE_LEVELS = 1000
"""Levels of the augmentation schedule (SD x4's; its U-Net embeds 1000 classes)."""
NOISE_SCHEDULE = ("scaled_linear", 1e-4, 0.02)
"""SD x4's augmentation betas: LDM's "linear" (linear in sqrt(beta), ours scaled_linear), 1e-4 to 0.02."""


def downsample(images: Tensor, factor: int) -> Tensor:
    """(b, c, H, W) -> (b, c, H / factor, W / factor): bicubic with antialiasing (a low-pass filter first)."""
    h, w = images.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by the upscaling factor {factor}")
    small = F.interpolate(images.float(), size=(h // factor, w // factor), mode="bicubic", antialias=True)
    return small.to(images.dtype)


class LowResolutionConditioner(nn.Module):
    """Builds the U-Net's image conditioning from low-resolution images (see the module docstring)."""

    def __init__(self, factor: int, max_noise_level: int):
        super().__init__()
        if factor < 1:
            raise ValueError(f"the upscaling factor must be >= 1, got {factor}")
        if not 1 <= max_noise_level <= NOISE_LEVELS:
            raise ValueError(f"max_noise_level must be in [1, {NOISE_LEVELS}], got {max_noise_level}")
        self.factor = factor
        self.max_noise_level = max_noise_level
        kind, start, end = NOISE_SCHEDULE
        alphas_cumprod = alphas_cumprod_from_betas(make_betas(kind, NOISE_LEVELS, start, end))
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)  # from constants

    def check_noise_level(self, noise_level: int) -> None:
        """Raise unless `noise_level` is one of the schedule's levels."""
        if not 0 <= noise_level < NOISE_LEVELS:
            raise ValueError(f"noise level must be in [0, {NOISE_LEVELS - 1}], got {noise_level}")

    def augment(self, low_res: Tensor, noise_levels: Tensor, noise: Tensor) -> ImageConditioning:
        """The conditioning of low-resolution images (b, 3, h, w) in [-1, 1] noised to `noise_levels` (b,)."""
        levels = noise_levels.long().to(low_res.device)
        if levels.min() < 0 or levels.max() >= NOISE_LEVELS:
            raise ValueError(f"noise levels must be in [0, {NOISE_LEVELS - 1}], got {levels.tolist()}")
        noised = q_sample(low_res.float(), self.alphas_cumprod[levels], noise.float())
        return ImageConditioning(noised.to(low_res.dtype), class_labels=levels)

    def for_training(self, images: Tensor, generator: Generators = None) -> ImageConditioning:
        """The conditioning of a training batch of high-resolution images (b, 3, H, W) in [-1, 1]:
        downsampled by the factor, noised at levels drawn from [0, max_noise_level)."""
        low_res = downsample(images, self.factor)
        levels = sample_timesteps(images.shape[0], self.max_noise_level, images.device, generator)
        return self.augment(low_res, levels, randn_like(low_res, generator))

    @torch.no_grad()
    def for_sampling(
        self, low_res: Tensor, noise_level: int, generator: Generators = None
    ) -> ImageConditioning:
        """The conditioning of low-resolution images (b, 3, h, w) in [-1, 1], all noised to `noise_level`."""
        self.check_noise_level(noise_level)
        levels = torch.full((low_res.shape[0],), noise_level, dtype=torch.long, device=low_res.device)
        return self.augment(low_res, levels, randn_like(low_res, generator))
