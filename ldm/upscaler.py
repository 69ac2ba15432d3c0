"""Upscaler: low-resolution images and prompts -> images `factor` times larger, with a super-resolution model.

SD x4's pipeline: the low-resolution image (in [-1, 1]) is noised to a chosen level (its
conditioning augmentation, ``ldm.conditioning.low_resolution``; more noise lets the model redraw
more), and that image and level condition every denoising step of a chain started from pure noise
at the output's latent size; classifier-free guidance drops the prompt only. Used by
``python -m ldm.sample upscale`` (``scripts/upscale.py``), the training sample grids and
``benchmarks/eval_sr.py``. Every image has its own seed, as in ``Text2Image``: its generator draws
the starting noise, then the augmentation noise, then the sampler's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ldm.conditioning.low_resolution import LowResolutionConditioner
from ldm.config import SamplerConfig
from ldm.pipeline import Text2Image, load_module
from ldm.samplers.noise import per_sample_generators


def check_images(images: torch.Tensor, what: str = "images") -> None:
    """Raise unless `images` is [B, 3, H, W] with values in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected {what} of shape [B, 3, H, W], got {tuple(images.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"expected {what} with values in [0, 1]")


class Upscaler:
    """Samples images `factor` times larger than low-resolution inputs, guided by prompts."""

    def __init__(self, pipe: Text2Image, conditioner: LowResolutionConditioner, noise_level: int):
        conditioner.check_noise_level(noise_level)
        self.pipe = pipe
        self.conditioner = conditioner
        self.noise_level = noise_level
        """The default noise level (the checkpoint's image_conditioning.noise_level)."""

    @classmethod
    def from_module(cls, module: nn.Module, compile: bool = False, cuda_graphs: bool = False) -> Upscaler:
        """From a super-resolution ``LatentDiffusion`` (or its training module; shares its weights)."""
        if not isinstance(module.image_conditioner, LowResolutionConditioner):
            task = module.image_conditioning.task
            raise ValueError(f"not a super-resolution model (image_conditioning.task={task})")
        pipe = Text2Image.from_module(module, compile=compile, cuda_graphs=cuda_graphs)
        return cls(pipe, module.image_conditioner, module.image_conditioning.noise_level)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> Upscaler:
        """From a super-resolution stage-2 checkpoint, on `device` (default: CUDA when available)."""
        module = load_module(path, device, task="super_resolution")
        return cls.from_module(module, compile=compile, cuda_graphs=cuda_graphs)

    @property
    def factor(self) -> int:
        """Output side / input side."""
        return self.conditioner.factor

    @property
    def sampler(self) -> SamplerConfig:
        """The checkpoint's sampler."""
        return self.pipe.sampler

    def check_request(
        self, sampler: SamplerConfig, height: int, width: int, negative_prompt: str = ""
    ) -> tuple[int, int]:
        """Raise a clear error for an input height x width that cannot be upscaled (or a request a distilled
        checkpoint refuses); returns the output's."""
        out_h, out_w = height * self.factor, width * self.factor
        multiple = self.pipe.size_multiple
        if out_h % multiple or out_w % multiple:
            step = multiple // self.factor if multiple % self.factor == 0 else multiple
            raise ValueError(
                f"an input of {width}x{height} pixels upscales to {out_w}x{out_h}, which this model's "
                f"autoencoder and U-Net cannot take (sides must be multiples of {multiple}): give an input "
                f"whose sides are multiples of {step}"
            )
        return self.pipe.check_request(sampler, out_h, out_w, negative_prompt)

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        noise_level: Optional[int] = None,
        sampler: Optional[SamplerConfig] = None,
        negative_prompt: str = "",
        callback: Optional[Callable[[dict], None]] = None,
    ) -> torch.Tensor:
        """Images [B, 3, factor H, factor W] in [0, 1] from low-resolution `images` [B, 3, H, W] in
        [0, 1], one per (image, prompt, seed); `noise_level`: the input's augmentation level (default:
        the model's)."""
        sampler = sampler or self.pipe.sampler
        check_images(images, "input images")
        if not len(prompts) == len(seeds) == images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images, {len(prompts)} prompts and {len(seeds)} seeds")
        height, width = self.check_request(sampler, *images.shape[-2:], negative_prompt)
        level = self.noise_level if noise_level is None else noise_level
        sigmas = self.pipe.sigmas(sampler)
        generators = per_sample_generators(seeds)
        x = self.pipe.initial_noise(generators, height, width, sigmas[0])
        low_res = images.to(self.pipe.device, torch.float32) * 2 - 1
        image = self.conditioner.for_sampling(low_res, level, generators)
        latents = self.pipe.denoise(
            x, sigmas, prompts, generators, sampler, negative_prompt, callback, image=image
        )
        return self.pipe.decode(latents)
