"""The networks a benchmark times: the U-Net (as a denoiser), the autoencoder and the training objective.

Built from the config with random, seeded weights (timing does not depend on their values), or
taken from a stage-2 checkpoint. The text encoder is not built: the U-Net attends to a context
tensor of the conditioner's length and the U-Net's context width, which is all a step needs, so
a preset whose text encoder has no local weights (SD 2's ViT-H) is measured offline.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ldm.acceleration import CudaGraphed
from ldm.autoencoder.model import KLAutoencoder
from ldm.benchmark.settings import BenchSettings
from ldm.config import TrainConfig
from ldm.denoiser.attention import CrossAttention
from ldm.denoiser.unet import UNetModel
from ldm.diffusion.objective import DiffusionObjective
from ldm.diffusion.parametrization import DiscreteDenoiser
from ldm.diffusion.schedules import alphas_cumprod_from_config

log = logging.getLogger(__name__)


@dataclass
class BenchNetworks:
    """The U-Net (eager), its denoiser wrapper (which holds the compiled U-Net when compiling), the
    autoencoder, the objective, and what an SD-layout export of them needs."""

    unet: UNetModel
    denoiser: DiscreteDenoiser
    autoencoder: KLAutoencoder
    objective: DiffusionObjective
    context_length: int
    hparams: dict[str, Any]
    """hyper_parameters in a stage-2 checkpoint's layout (for ``ldm.weights.export``)."""
    scale_factor: float

    @property
    def context_dim(self) -> int:
        return self.unet.context_dim

    @property
    def latent_channels(self) -> int:
        return self.unet.in_channels

    def latent_side(self, resolution: int) -> int:
        """The latent side of `resolution`-pixel images; raises unless every network can take it."""
        f = self.autoencoder.downsample_factor
        if resolution % f:
            raise ValueError(f"bench.resolution={resolution} is not divisible by the autoencoder factor {f}")
        side, g = resolution // f, self.unet.downsampling_factor
        if side % g:
            raise ValueError(
                f"bench.resolution={resolution} gives {side}x{side} latents, which the U-Net's {g}x "
                f"downsampling cannot halve evenly: use a multiple of {f * g}"
            )
        return side


def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Every parameter random and O(1)-preserving: matrices N(0, 1/fan_in), norm scales near 1, the rest
    small (the U-Net's zero-initialised output layers would otherwise make its outputs zero)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))


def hparams_of(config: TrainConfig, image_size: int) -> dict[str, Any]:
    """A config's networks as a stage-2 checkpoint's hyper_parameters."""
    parts = ("autoencoder", "denoiser", "conditioner", "diffusion", "sampler")
    return {**{k: dataclasses.asdict(getattr(config, k)) for k in parts}, "image_size": image_size}


def build_networks(
    config: TrainConfig, resolution: int, *, seed: int = 0, ckpt: Optional[str] = None
) -> BenchNetworks:
    """The networks of `config` with random weights from `seed`, or those of the stage-2 checkpoint `ckpt`."""
    if ckpt is not None:
        from ldm.weights.checkpoint import load_latent_diffusion

        module = load_latent_diffusion(ckpt)
        hparams = {**module.checkpoint_hparams, "image_size": resolution}
        return BenchNetworks(
            unet=module.model.diffusion_model,
            denoiser=module.model,
            autoencoder=module.first_stage_model,
            objective=module.objective,
            context_length=module.cond_stage_model.context_length,
            hparams=hparams,
            scale_factor=float(module.scale_factor),
        )
    generator = torch.Generator().manual_seed(seed)
    unet = UNetModel.from_config(config.denoiser)
    autoencoder = KLAutoencoder.from_config(config.autoencoder).requires_grad_(False).eval()
    randomize_(unet, generator)
    randomize_(autoencoder, generator)
    alphas_cumprod = alphas_cumprod_from_config(config.diffusion)
    return BenchNetworks(
        unet=unet,
        denoiser=DiscreteDenoiser(unet, alphas_cumprod, config.diffusion.parameterization),
        autoencoder=autoencoder,
        objective=DiffusionObjective.from_config(config.diffusion, alphas_cumprod),
        context_length=config.conditioner.context_length,
        hparams=hparams_of(config, resolution),
        scale_factor=config.diffusion.scale_factor or 1.0,
    )


def set_attention_backend(unet: nn.Module, backend: str) -> None:
    """Every attention layer of the U-Net computes with `backend` (sdpa, xformers or math)."""
    for module in unet.modules():
        if isinstance(module, CrossAttention):
            module.backend = backend


@contextmanager
def without_checkpointing(module: nn.Module) -> Iterator[None]:
    """Within the block no block of `module` recomputes its forward pass in backward (checkpointing off)."""
    blocks = [m for m in module.modules() if getattr(m, "use_checkpoint", False)]
    for m in blocks:
        m.use_checkpoint = False
    try:
        yield
    finally:
        for m in blocks:
            m.use_checkpoint = True


def prepare_networks(networks: BenchNetworks, settings: BenchSettings) -> None:
    """Move the networks to the device in the memory format, set the attention backend, compile (with CUDA
    graphs) if asked."""
    for module in (networks.denoiser, networks.autoencoder, networks.objective):
        module.to(settings.device, memory_format=settings.memory_format())
    if settings.attention is not None:
        set_attention_backend(networks.unet, settings.attention)
    if settings.cuda_graphs:
        log.info("compiling the U-Net with CUDA graphs (torch.compile, mode reduce-overhead)")
        networks.denoiser.diffusion_model = CudaGraphed(networks.unet)
    elif settings.compile:
        log.info("compiling the U-Net (torch.compile)")
        networks.denoiser.diffusion_model = torch.compile(networks.unet)
    if settings.compile:
        log.info("compiling the autoencoder's encoder and decoder (torch.compile)")
        networks.autoencoder.encoder = torch.compile(networks.autoencoder.encoder)
        networks.autoencoder.decoder = torch.compile(networks.autoencoder.decoder)
