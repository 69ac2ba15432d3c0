"""U-Net building blocks: timestep embedding, residual block, down/up-sampling, and the sequential
container that routes the timestep embedding and the context to the layers that take them.

Names follow Stable Diffusion's ``openaimodel.py`` (``in_layers``, ``emb_layers``, ``out_layers``,
``skip_connection``, ``op``, ``conv``) so that SD weights load by key.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ldm.denoiser.conv import Conv2d
from ldm.upsampling import upsample_conv


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (b,) -> (b, dim), cosines first as in SD.

    freqs_i = max_period ** (-i / half) for i < half = dim // 2; an odd dim gets a zero last column.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.float()[:, None] * freqs[None, :]  # (b, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (b, 2 * half)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def normalization(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups and eps 1e-5, SD's ``normalization()``."""
    if channels % 32 != 0:
        raise ValueError(f"{channels} channels are not divisible by the 32 groups of GroupNorm")
    return nn.GroupNorm(32, channels, eps=1e-5)


class ResBlock(nn.Module):
    """Residual block: norm-SiLU-conv, add the projected timestep embedding, norm-SiLU-dropout-conv.

    The last conv is zero-initialised, so the block starts as its skip connection (1x1 conv when the
    channel count changes, else the identity).
    """

    conditioned_on = "emb"
    """The second input of ``forward`` (read by ``TimestepEmbedSequential``)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: Optional[int] = None,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (b, channels, h, w), emb: (b, emb_channels) -> (b, out_channels, h, w)."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None].to(h.dtype)  # (b, c) -> (b, c, 1, 1)
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Halve height and width with a stride-2 3x3 conv (key ``op``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(b, c, h, w) -> (b, c, h/2, w/2)."""
        return self.op(x)


class Upsample(nn.Module):
    """Double height and width: nearest-neighbour 2x, then a 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(b, c, h, w) -> (b, c, 2h, 2w)."""
        return upsample_conv(self.conv, x)  # on the CPU, large ones without the upsampled copy


class TimestepEmbedSequential(nn.Sequential):
    """A sequential whose ResBlocks also get the timestep embedding and SpatialTransformers the context."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:  # type: ignore[override]
        """Apply each layer in turn: (b, c, h, w) -> (b, c', h', w')."""
        for layer in self:
            # By attribute, not by type: FSDP's and activation checkpointing's wrappers pass attribute
            # lookups through to the block they wrap, but are not instances of its class.
            takes = getattr(layer, "conditioned_on", None)
            if takes == "emb":
                x = layer(x, emb)
            elif takes == "context":
                x = layer(x, context)
            else:
                x = layer(x)
        return x
