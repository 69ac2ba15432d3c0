"""Exponential moving average of a network's weights (Polyak averaging), as LDM and SD keep for the U-Net.

After optimizer step n (counted from 1) every averaged parameter moves as

    ema = decay_n * ema + (1 - decay_n) * param,

where decay_n warms up so that early averages are not dominated by the random initialisation:
``ldm`` is LDM's LitEma, decay_n = min(decay, (1 + n) / (10 + n)); ``power`` is the warm-up of
diffusers' EMAModel (Karras et al.'s power EMA with inv_gamma 1), decay_n = min(decay, 1 - n ** -power),
which copies the weights at n = 1; ``none`` uses decay from the start.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

EMA_WARMUPS = ("ldm", "power", "none")


def ema_decay(num_updates: int, decay: float, warmup: str = "ldm", power: float = 2 / 3) -> float:
    """The decay used by update number `num_updates` (1 for the first)."""
    if num_updates < 1:
        raise ValueError(f"num_updates counts from 1, got {num_updates}")
    n = num_updates
    if warmup == "ldm":
        return min(decay, (1 + n) / (10 + n))
    if warmup == "power":
        return min(decay, 1 - n**-power)
    if warmup == "none":
        return decay
    raise ValueError(f"unknown ema_warmup '{warmup}'; available: {', '.join(EMA_WARMUPS)}")


class ExponentialMovingAverage(nn.Module):
    """An averaged copy (``module``) of a network, updated with :meth:`update` after each optimizer step.

    The copy and the update count are in the state dict (keys ``module.*`` and ``num_updates``), so
    they are saved in checkpoints and restored on resume. The copy never trains and takes no gradient.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: str = "ldm", power: float = 2 / 3):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {decay}")
        if power <= 0:
            raise ValueError(f"ema_power must be > 0, got {power}")
        ema_decay(1, decay, warmup, power)  # checks the warm-up name
        self.decay = decay
        self.warmup = warmup
        self.power = power
        self.module = copy.deepcopy(model).requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))

    def train(self, mode: bool = True) -> ExponentialMovingAverage:
        """The averaged copy always stays in eval mode."""
        return super().train(False)

    def _pairs(self, model: nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ours = dict(self.module.named_parameters())
        theirs = dict(model.named_parameters())
        if ours.keys() != theirs.keys():
            raise ValueError("the EMA copy and the model have different parameters")
        for name, param in theirs.items():
            yield ours[name], param

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Move the average towards `model`'s current weights; returns the decay used."""
        n = int(self.num_updates) + 1
        decay = ema_decay(n, self.decay, self.warmup, self.power)
        averaged, current = zip(*self._pairs(model))
        # ema += (1 - decay) * (param - ema), i.e. ema = decay * ema + (1 - decay) * param
        torch._foreach_lerp_(
            list(averaged), [p.detach().to(a.dtype) for a, p in zip(averaged, current)], 1 - decay
        )
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)
        self.num_updates.fill_(n)
        return decay

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into `model`."""
        for averaged, param in self._pairs(model):
            param.copy_(averaged)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average from `model`'s weights (e.g. after loading pretrained weights)."""
        for averaged, param in self._pairs(model):
            averaged.copy_(param)
        self.num_updates.zero_()

    @contextmanager
    def average_weights(self, model: nn.Module) -> Iterator[None]:
        """Within the block `model` holds the averaged weights; its own are put back after."""
        saved = [p.detach().clone() for p in model.parameters()]
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(model.parameters(), saved):
                    param.copy_(value)
