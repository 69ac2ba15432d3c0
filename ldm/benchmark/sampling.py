"""Sampling with classifier-free guidance, as ``Text2Image`` samples: iterations (sampler steps) per second.

A timed run is one sampler run of ``bench.sample_steps`` steps over a batch, through the pipeline's
own ``Text2Image.denoise``: each step calls the denoiser once on the conditional and unconditional
halves batched together (2B), or twice for the second-order steps of heun (model calls are counted
and reported). The text encoder is replaced by a fixed random context of the right shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ldm.autoencoder.model import KLAutoencoder
from ldm.benchmark.memory import memory_metrics, reset_device_peak
from ldm.benchmark.networks import BenchNetworks
from ldm.benchmark.report import Measurement, Quantity
from ldm.benchmark.settings import BenchSettings, inference
from ldm.benchmark.timing import median, time_rounds
from ldm.config import SamplerConfig
from ldm.pipeline import Text2Image
from ldm.samplers.noise import per_sample_generators


class CallCounter:
    """Counts a module's forward calls from its creation until ``remove()``."""

    def __init__(self, module: nn.Module):
        self.count = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_) -> None:
        self.count += 1

    def remove(self) -> None:
        self._handle.remove()


class FixedContext:
    """Stands in for the text encoder: fixed token states [T, D] for every prompt, and others for the
    empty one (the unconditional branch), so that guidance mixes two different predictions."""

    def __init__(self, cond: torch.Tensor, uncond: torch.Tensor):
        self.cond = cond
        self.uncond = uncond

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([self.uncond if prompt == "" else self.cond for prompt in prompts])  # [B, T, D]


class GuidedSampling:
    """One guided sampler run over a batch of fixed starting latents, with per-sample generators (fresh
    each run, so that every run of a stochastic sampler draws the same noise)."""

    def __init__(
        self,
        denoiser: nn.Module,
        autoencoder: KLAutoencoder,
        sampler: SamplerConfig,
        networks: BenchNetworks,
        settings: BenchSettings,
        batch_size: int,
        seed: int = 0,
    ):
        generator = torch.Generator().manual_seed(seed)
        cond, uncond = torch.randn(2, networks.context_length, networks.context_dim, generator=generator)
        text_encoder = FixedContext(cond.to(settings.device), uncond.to(settings.device))
        self.pipe = Text2Image(autoencoder, text_encoder, denoiser, 1.0, settings.resolution, sampler)
        self.pipe.check_request(sampler)
        self.sampler = sampler
        self.settings = settings
        self.sigmas = self.pipe.sigmas(sampler)
        self.seeds = list(range(seed, seed + batch_size))
        side = networks.latent_side(settings.resolution)
        noise = torch.randn(batch_size, networks.latent_channels, side, side, generator=generator)
        # The chain starts from z_T ~ N(0, I), i.e. x = z_T * sqrt(1 + sigma_max^2) in sigma form.
        x = noise.to(settings.device) * (self.sigmas[0] ** 2 + 1).sqrt()
        self.x = x.contiguous(memory_format=settings.memory_format())

    def __call__(self) -> torch.Tensor:
        with inference(self.settings):
            prompts = ["a prompt"] * len(self.seeds)
            return self.pipe.denoise(
                self.x, self.sigmas, prompts, per_sample_generators(self.seeds), self.sampler
            )


def sampling_case(
    networks: BenchNetworks, settings: BenchSettings, sampler: SamplerConfig, batch_size: int
) -> GuidedSampling:
    """Our denoiser's guided sampling run at `batch_size`."""
    networks.unet.eval()
    return GuidedSampling(networks.denoiser, networks.autoencoder, sampler, networks, settings, batch_size)


def sampling_metrics(
    seconds: float, steps: int, calls_per_run: float, batch_size: int
) -> dict[str, Quantity]:
    """it/s (sampler steps per second of a batch), images/s and model calls per run."""
    return {
        "it_per_s": Quantity(steps / seconds, "it/s"),
        "images_per_s": Quantity(batch_size / seconds, "images/s"),
        "run_seconds": Quantity(seconds, "s"),
        "model_calls": Quantity(calls_per_run, "calls/run"),
    }


def measure_sampling(
    networks: BenchNetworks, settings: BenchSettings, name: str, sampler: SamplerConfig, batch_size: int
) -> Measurement:
    """it/s of sampler `name` with guidance at `batch_size` (B images: 2B rows per model call)."""
    run: Callable[[], object] = sampling_case(networks, settings, sampler, batch_size)
    calls = CallCounter(networks.denoiser)
    reset_device_peak(settings.device)
    rounds = time_rounds({"run": run}, rounds=settings.rounds, warmup=settings.warmup, device=settings.device)
    calls.remove()
    seconds = median(rounds["run"])
    metrics = sampling_metrics(
        seconds, sampler.steps, calls.count / (settings.rounds + settings.warmup), batch_size
    )
    return Measurement(
        "sample",
        f"{name} x{sampler.steps}, guidance {sampler.guidance_scale:g}",
        batch_size,
        {**metrics, **memory_metrics(settings.device)},
    )
