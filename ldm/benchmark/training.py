"""The U-Net's training step on latents: forward and loss, backward, and the fused AdamW update.

Samples per second, and MFU: the step's model FLOPs per second over the peak measured in the same
run. The FLOPs are counted by ``ldm.flops.FlopCount`` on a step of one sample with gradient
checkpointing off (recomputing a forward pass is not model work; Chowdhery et al. 2022, App. B),
times the batch size: every counted op (matrix products, convolutions, attention) is linear in the
batch. The optimizer's update has no counted FLOPs (element-wise work), as in training's own logs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Optional

import torch
from torch import nn

from ldm.benchmark.memory import memory_metrics, reset_device_peak
from ldm.benchmark.networks import BenchNetworks, without_checkpointing
from ldm.benchmark.report import Measurement, Quantity
from ldm.benchmark.settings import BenchSettings
from ldm.benchmark.timing import median, time_rounds
from ldm.diffusion.objective import DiffusionObjective
from ldm.flops import FlopCount
from ldm.optim import adamw


class TrainingStep:
    """One training step of `network` on fixed latents and context: zero the gradients, the diffusion
    loss (fresh t and noise), backward (through `scaler` for fp16), the optimizer's update.

    Without an optimizer, the step ends after the backward pass and frees `parameters`' gradients (so
    two networks timed in turn never hold theirs at once)."""

    def __init__(
        self,
        network: Callable[..., torch.Tensor],
        objective: DiffusionObjective,
        optimizer: Optional[torch.optim.Optimizer],
        latents: torch.Tensor,
        context: torch.Tensor,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        scaler: Optional[torch.amp.GradScaler] = None,
        parameters: Sequence[nn.Parameter] = (),
    ):
        if optimizer is None and scaler is not None:
            raise ValueError("a training step without an optimizer cannot use a gradient scaler")
        self.network = network
        self.parameters = list(parameters)
        self.objective = objective
        self.optimizer = optimizer
        self.latents = latents
        self.context = context
        self.autocast = autocast
        self.scaler = scaler

    def __call__(self) -> torch.Tensor:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.objective(self.network, self.latents, self.context)
        if self.optimizer is None:
            loss.backward()
            free_gradients(self.parameters)
        elif self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss.detach()


def free_gradients(parameters: Sequence[nn.Parameter]) -> None:
    """Drop the gradients of `parameters` (their memory goes back to the allocator)."""
    for p in parameters:
        p.grad = None


def step_flops(step: TrainingStep, module: nn.Module) -> int:
    """FLOPs that FlopCount counts in one run of `step`, with `module`'s gradient checkpointing off."""
    with without_checkpointing(module), FlopCount() as counter:
        step()
    return counter.total


def training_inputs(
    networks: BenchNetworks, settings: BenchSettings, batch_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random latents [B, C, h, w] (in the settings' memory format) and context [B, T, D] on the device."""
    generator = torch.Generator().manual_seed(seed)
    side = networks.latent_side(settings.resolution)
    latents = torch.randn(batch_size, networks.latent_channels, side, side, generator=generator)
    context = torch.randn(batch_size, networks.context_length, networks.context_dim, generator=generator)
    latents = latents.to(settings.device).contiguous(memory_format=settings.memory_format())
    return latents, context.to(settings.device)


def training_step(
    network: Callable[..., torch.Tensor],
    networks: BenchNetworks,
    settings: BenchSettings,
    batch_size: int,
    optimizer: Optional[torch.optim.Optimizer],
    parameters: Sequence[nn.Parameter] = (),
) -> TrainingStep:
    """A step of `network` on random inputs, with the networks' objective and `optimizer` (of its weights;
    None: forward, loss and backward only, then `parameters`' gradients are freed)."""
    latents, context = training_inputs(networks, settings, batch_size)
    use_scaler = settings.precision == "fp16" and optimizer is not None
    scaler = torch.amp.GradScaler(settings.device.type) if use_scaler else None
    return TrainingStep(
        network, networks.objective, optimizer, latents, context, settings.autocast, scaler, parameters
    )


def measure_training(
    networks: BenchNetworks, settings: BenchSettings, batch_size: int, peak_flops_per_s: float
) -> Measurement:
    """Samples/s, FLOPs, FLOP/s and MFU of the U-Net's training step at `batch_size`."""
    networks.unet.train()
    parameters = list(networks.unet.parameters())
    diffusion = networks.hparams["diffusion"]
    optimizer = adamw(parameters, lr=diffusion["learning_rate"], weight_decay=diffusion["weight_decay"])
    # FLOPs: one sample through the eager U-Net (FlopCount sees every op; compiled code would hide them).
    one = training_step(networks.unet, networks, settings, 1, optimizer)
    flops_per_sample = step_flops(one, networks.unet)
    step = training_step(networks.denoiser.diffusion_model, networks, settings, batch_size, optimizer)
    reset_device_peak(settings.device)
    seconds = median(
        time_rounds({"step": step}, rounds=settings.rounds, warmup=settings.warmup, device=settings.device)[
            "step"
        ]
    )
    free_gradients(parameters)  # what follows (a comparison, sampling) need not hold them
    flops = flops_per_sample * batch_size
    metrics = {
        "samples_per_s": Quantity(batch_size / seconds, "samples/s"),
        "step_seconds": Quantity(seconds, "s"),
        "flops_per_step": Quantity(flops, "FLOP"),
        "flops_per_s": Quantity(flops / seconds, "FLOP/s"),
        "mfu": Quantity(flops / seconds / peak_flops_per_s, "fraction of peak"),
        **memory_metrics(settings.device),
    }
    return Measurement("train", "unet step", batch_size, metrics)
