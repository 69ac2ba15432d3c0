"""Text2Image: prompts -> images with a trained latent diffusion model.

Used by ``scripts/txt2img.py``, the evaluator and the training sample-grid callback, so that what
is tested is what users run. Every image has its own seed: its starting noise is drawn from a
generator seeded with that seed alone, so a seed gives the same image whatever the batch.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ldm.config import SamplerConfig
from ldm.samplers import get_sampler
from ldm.samplers.guidance import CFGDenoiser
from ldm.samplers.sigmas import discrete_sigmas

log = logging.getLogger(__name__)


class Text2Image:
    """Samples images from a text prompt with a frozen autoencoder, text encoder and denoiser."""

    def __init__(
        self,
        autoencoder: nn.Module,
        text_encoder: nn.Module,
        denoiser: nn.Module,
        scale_factor: float,
        image_size: int,
        sampler: SamplerConfig,
    ):
        self.autoencoder = autoencoder
        self.text_encoder = text_encoder
        self.denoiser = denoiser
        self.scale_factor = float(scale_factor)
        self.image_size = image_size
        self.sampler = sampler

    @classmethod
    def from_module(cls, module: nn.Module) -> Text2Image:
        """From a LatentDiffusionModule (shares its weights)."""
        return cls(
            module.first_stage_model,
            module.cond_stage_model,
            module.model,
            float(module.scale_factor),
            module.image_size,
            module.sampler_config,
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None) -> Text2Image:
        """From a stage-2 checkpoint, on `device` (default: CUDA when available, else CPU)."""
        from ldm.checkpoint import load_latent_diffusion

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        module = load_latent_diffusion(path).to(device)
        return cls.from_module(module)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.post_quant_conv.in_channels

    def check_request(
        self, sampler: SamplerConfig, height: Optional[int] = None, width: Optional[int] = None
    ) -> tuple[int, int]:
        """Raise a clear error for a request that cannot be sampled; returns the (height, width) to use."""
        height, width = height or self.image_size, width or self.image_size
        f = self.autoencoder.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not divisible by the autoencoder factor {f}")
        if sampler.steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {sampler.steps}")
        get_sampler(sampler.name)
        return height, width

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        sampler: Optional[SamplerConfig] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        negative_prompt: str = "",
        callback: Optional[Callable[[dict], None]] = None,
    ) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1], one per (prompt, seed) pair."""
        sampler = sampler or self.sampler
        height, width = self.check_request(sampler, height, width)
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        f = self.autoencoder.downsample_factor
        sample_fn = get_sampler(sampler.name)
        device = self.device

        context = self.text_encoder(list(prompts))
        uncond = self.text_encoder([negative_prompt] * len(prompts))
        sigmas = discrete_sigmas(self.denoiser.sigmas, sampler.steps, sampler.spacing)
        shape = (self.latent_channels, height // f, width // f)
        noise = torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        )
        # The chain starts from z_T ~ N(0, I), i.e. x = z_T * sqrt(1 + sigma_max^2) in sigma form.
        x = noise.to(device) * (sigmas[0] ** 2 + 1).sqrt()

        options = {"eta": sampler.eta}
        accepted = inspect.signature(sample_fn).parameters
        options = {k: v for k, v in options.items() if k in accepted}
        generator = torch.Generator(device=device).manual_seed(int(seeds[0]))
        latents = sample_fn(
            CFGDenoiser(self.denoiser, sampler.guidance_scale),
            x,
            sigmas,
            extra_args={"context": context, "uncond_context": uncond},
            callback=callback,
            generator=generator,
            **options,
        )
        images = self.autoencoder.decode(latents / self.scale_factor)
        return ((images.float().clamp(-1, 1) + 1) / 2).cpu()
