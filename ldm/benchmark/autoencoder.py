"""The autoencoder's encoder (images -> posterior) and decoder (latents -> images): images per second."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ldm.benchmark.memory import memory_metrics, reset_device_peak
from ldm.benchmark.networks import BenchNetworks
from ldm.benchmark.report import Measurement, Quantity
from ldm.benchmark.settings import BenchSettings, inference
from ldm.benchmark.timing import median, time_rounds


def autoencoder_inputs(
    networks: BenchNetworks, settings: BenchSettings, batch_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images [B, 3, R, R] in [-1, 1] and latents [B, C, R/f, R/f] on the device."""
    generator = torch.Generator().manual_seed(seed)
    side, r = networks.latent_side(settings.resolution), settings.resolution
    images = torch.rand(batch_size, networks.autoencoder.in_channels, r, r, generator=generator) * 2 - 1
    latents = torch.randn(batch_size, networks.latent_channels, side, side, generator=generator)
    form = settings.memory_format()
    return images.to(settings.device).contiguous(memory_format=form), latents.to(settings.device).contiguous(
        memory_format=form
    )


def autoencoder_cases(
    encode: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    latents: torch.Tensor,
    settings: BenchSettings,
) -> dict[str, Callable[[], torch.Tensor]]:
    """{"encode": images -> posterior means, "decode": latents -> images}, without gradients."""

    def run(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with inference(settings):
                return function(x)

        return call

    return {"encode": run(encode, images), "decode": run(decode, latents)}


def our_autoencoder_cases(
    networks: BenchNetworks, settings: BenchSettings, batch_size: int
) -> dict[str, Callable[[], torch.Tensor]]:
    """Our autoencoder's encode and decode cases at `batch_size`."""
    autoencoder = networks.autoencoder
    return autoencoder_cases(
        lambda x: autoencoder.encode(x).mean,
        autoencoder.decode,
        *autoencoder_inputs(networks, settings, batch_size),
        settings,
    )


def measure_autoencoder(
    networks: BenchNetworks, settings: BenchSettings, batch_size: int
) -> list[Measurement]:
    """Images/s of encoding and of decoding at `batch_size` (timed in alternating rounds)."""
    reset_device_peak(settings.device)
    cases = our_autoencoder_cases(networks, settings, batch_size)
    rounds = time_rounds(cases, rounds=settings.rounds, warmup=settings.warmup, device=settings.device)
    memory = memory_metrics(settings.device)
    measurements = []
    for name, seconds in rounds.items():
        seconds = median(seconds)
        metrics = {
            "images_per_s": Quantity(batch_size / seconds, "images/s"),
            "seconds": Quantity(seconds, "s"),
        }
        measurements.append(Measurement("autoencoder", name, batch_size, {**metrics, **memory}))
    return measurements
