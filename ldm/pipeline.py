"""Text2Image: prompts (and, for img2img, starting images) -> images with a trained latent diffusion model.

Used by ``python -m ldm.sample`` (txt2img, img2img), the evaluator and the training sample-grid
callback, so that what is tested is what users run. Every image has its own seed: one generator,
seeded with that seed alone, draws the image's starting noise and then every noise the sampler
adds (``ldm.samplers.noise``), so a seed gives the same image whatever the batch. With
``compile=True`` the denoiser and the autoencoder run compiled with their weights frozen in
(``ldm.acceleration.compile_frozen``): the first batch of each size compiles, later ones are faster;
``cuda_graphs=True`` also replays each denoiser call as a CUDA graph (CUDA only).
A distilled checkpoint (``ldm.samplers.distilled``) is sampled only with the step count and sampler
it was distilled for; when guidance was distilled, the scale is the network's input (one call per step).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ldm.acceleration import compile_frozen
from ldm.conditioning.concat import Conditioning, ImageConditioning
from ldm.config import SamplerConfig
from ldm.diffusion.channel_normalization import denormalize, normalize
from ldm.samplers import get_sampler
from ldm.samplers.distilled import DistilledSampling, GuidanceInputDenoiser
from ldm.samplers.guidance import CFGDenoiser
from ldm.samplers.noise import per_sample_generators
from ldm.samplers.sigmas import get_sigmas

log = logging.getLogger(__name__)


def img2img_steps(strength: float, steps: int) -> int:
    """Steps that img2img runs at `strength`: the last floor(strength * steps) of the schedule (SD's img2img)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return math.floor(strength * steps + 1e-6)  # 1e-6: 0.29 * 100 is 28.999...


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
        channel_statistics: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        compile: bool = False,
        distilled: Optional[DistilledSampling] = None,
        cuda_graphs: bool = False,
    ):
        self.autoencoder = autoencoder
        self.text_encoder = text_encoder
        self.denoiser = denoiser
        self.scale_factor = float(scale_factor)
        self.channel_statistics = channel_statistics  # (mean, std) per latent channel, if normalized so
        self.image_size = image_size
        self.sampler = sampler
        self.distilled = distilled  # what a distilled student was trained for; None: any sampler
        # What sampling calls: the networks, or (compile) compiled functions of them; the modules
        # themselves are left as they are. Compiled ones keep the weights of their first call.
        self._denoise: Callable[..., torch.Tensor] = denoiser
        self._encode: Callable[[torch.Tensor], torch.Tensor] = self._posterior_mode
        self._decode: Callable[[torch.Tensor], torch.Tensor] = autoencoder.decode
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the networks on a CUDA device; they are on {self.device}")
        if compile or cuda_graphs:  # graphs for the denoiser, called once or twice a step
            self._denoise = compile_frozen(denoiser, cuda_graphs=cuda_graphs)
            self._encode = compile_frozen(self._posterior_mode)
            self._decode = compile_frozen(autoencoder.decode)

    @classmethod
    def from_module(cls, module: nn.Module, compile: bool = False, cuda_graphs: bool = False) -> Text2Image:
        """From a ``LatentDiffusion`` (or the training module built on it; shares its weights)."""
        return cls(
            module.first_stage_model,
            module.cond_stage_model,
            module.model,
            float(module.scale_factor),
            module.image_size,
            module.sampler_config,
            module.channel_statistics(),
            compile=compile,
            distilled=getattr(module, "distillation", None),
            cuda_graphs=cuda_graphs,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> Text2Image:
        """From a text-to-image stage-2 checkpoint, on `device` (default: CUDA when available, else CPU)."""
        module = load_module(path, device, task="none")
        return cls.from_module(module, compile=compile, cuda_graphs=cuda_graphs)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def size_multiple(self) -> int:
        """What image sides must be multiples of: the autoencoder factor x the U-Net's downsampling factor."""
        unet = getattr(self.denoiser, "diffusion_model", None)
        return self.autoencoder.downsample_factor * getattr(unet, "downsampling_factor", 1)

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.post_quant_conv.in_channels

    def check_request(
        self,
        sampler: SamplerConfig,
        height: Optional[int] = None,
        width: Optional[int] = None,
        negative_prompt: str = "",
    ) -> tuple[int, int]:
        """Raise a clear error for a request that cannot be sampled; returns the (height, width) to use."""
        height, width = height or self.image_size, width or self.image_size
        f = self.autoencoder.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not divisible by the autoencoder factor {f}")
        multiple = self.size_multiple
        if height % multiple or width % multiple:
            raise ValueError(
                f"image size {height}x{width} is not divisible by {multiple} (the autoencoder factor {f} "
                f"x the U-Net's downsampling factor {multiple // f})"
            )
        if sampler.steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {sampler.steps}")
        get_sampler(sampler.name)
        self.sigmas(sampler)  # checks the schedule, spacing and step count
        CFGDenoiser(
            self.denoiser, sampler.guidance_scale, sampler.guidance_rescale, sampler.guidance_interval
        )
        if self.distilled is not None:
            self.distilled.check_request(sampler, negative_prompt)
        return height, width

    def sigmas(self, sampler: SamplerConfig) -> torch.Tensor:
        """The sampler's descending noise levels for this model, ending at 0; shape [steps + 1]."""
        return get_sigmas(self.denoiser.sigmas, sampler.steps, sampler.schedule, sampler.spacing)

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
        height, width = self.check_request(sampler, height, width, negative_prompt)
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        sigmas = self.sigmas(sampler)
        generators = per_sample_generators(seeds)
        x = self.initial_noise(generators, height, width, sigmas[0])
        latents = self.denoise(x, sigmas, prompts, generators, sampler, negative_prompt, callback)
        return self.decode(latents)

    def initial_noise(
        self, generators: Sequence[torch.Generator], height: int, width: int, sigma_max: torch.Tensor
    ) -> torch.Tensor:
        """Where the chain starts for images of height x width: z_T ~ N(0, I), drawn first from each
        image's generator, i.e. x = z_T * sqrt(1 + sigma_max^2) in sigma form."""
        f = self.autoencoder.downsample_factor
        shape = (self.latent_channels, height // f, width // f)
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device)
        return noise * (sigma_max**2 + 1).sqrt()

    @torch.no_grad()
    def img2img(
        self,
        images: torch.Tensor,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        strength: float,
        sampler: Optional[SamplerConfig] = None,
        negative_prompt: str = "",
        callback: Optional[Callable[[dict], None]] = None,
    ) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] redrawn from `images` (same shape and range) toward the prompts.

        The schedule of `sampler.steps` is cut to its last floor(strength * steps) steps (SD's
        img2img); the image's latent is noised to the first sigma left, x = z + sigma * noise, and
        denoised from there. strength 1 runs the whole schedule; strength 0 returns the autoencoder's
        reconstruction of the input.
        """
        sampler = sampler or self.sampler
        steps = img2img_steps(strength, sampler.steps)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        if images.min() < 0 or images.max() > 1:
            raise ValueError("expected image values in [0, 1]")
        if not len(prompts) == len(seeds) == images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images, {len(prompts)} prompts and {len(seeds)} seeds")
        self.check_request(sampler, *images.shape[-2:], negative_prompt)
        sigmas = self.sigmas(sampler)[sampler.steps - steps :]  # [steps + 1], ending at 0
        z = self.encode(images)
        if steps == 0:
            return self.decode(z)
        generators = per_sample_generators(seeds)
        noise = torch.stack([torch.randn(z.shape[1:], generator=g) for g in generators]).to(z)
        x = z + sigmas[0] * noise  # the forward process at sigma, in sigma form
        latents = self.denoise(x, sigmas, prompts, generators, sampler, negative_prompt, callback)
        return self.decode(latents)

    def denoise(
        self,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        prompts: Sequence[str],
        generators: Sequence[torch.Generator],
        sampler: SamplerConfig,
        negative_prompt: str = "",
        callback: Optional[Callable[[dict], None]] = None,
        image: Optional[ImageConditioning] = None,
    ) -> torch.Tensor:
        """Latents x at sigmas[0] -> latents at sigmas[-1], with classifier-free guidance (or, for a
        guidance-distilled student, the scale as the network's input); an image-conditioned model's
        `image` conditions both guidance branches."""
        sample_fn = get_sampler(sampler.name)
        context = self.text_encoder(list(prompts))
        if self.distilled is not None and self.distilled.guided:
            guided: Callable[..., torch.Tensor] = GuidanceInputDenoiser(self._denoise, sampler.guidance_scale)
            uncond = None
        else:
            guided = CFGDenoiser(
                self._denoise, sampler.guidance_scale, sampler.guidance_rescale, sampler.guidance_interval
            )
            uncond = self.text_encoder([negative_prompt] * len(prompts))
        if image is not None:
            context = Conditioning(context, image)
        options = {} if sampler.eta is None else {"eta": sampler.eta}
        accepted = inspect.signature(sample_fn).parameters
        options = {k: v for k, v in options.items() if k in accepted}  # eta only where it applies
        return sample_fn(
            guided,
            x,
            sigmas,
            extra_args={"context": context, "uncond_context": uncond},
            callback=callback,
            generator=generators,
            **options,
        )

    def _posterior_mode(self, images: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(images).mode()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> scaled latents (the posterior mode, normalized per channel
        if the model does so, times the scale factor)."""
        images = images.to(self.device, next(self.autoencoder.parameters()).dtype)
        z = self._encode(images * 2 - 1)
        if self.channel_statistics is not None:
            z = normalize(z, *self.channel_statistics)
        return z * self.scale_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images [B, 3, H, W] in [0, 1], on the CPU."""
        z = latents / self.scale_factor
        if self.channel_statistics is not None:
            z = denormalize(z, *self.channel_statistics)
        images = self._decode(z)
        return ((images.float().clamp(-1, 1) + 1) / 2).cpu()


def load_module(path: str | Path, device: str | torch.device | None, task: str) -> nn.Module:
    """The ``LatentDiffusion`` of a stage-2 checkpoint of the kind `task` (image_conditioning.task), on
    `device` (default: CUDA when available, else CPU); another kind is a one-line CheckpointError."""
    from ldm.weights.checkpoint import load_latent_diffusion

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return load_latent_diffusion(path, task=task).to(device)
