"""Per-channel latent normalization: z -> (z - mean_c) / std_c, with each latent channel's statistics.

LDM multiplies every latent channel by one factor, 1 / std over all elements (``scaling.py``). That
assumes the channels have similar spreads. A small KL autoencoder need not give them: the shapes
preset's came out with per-channel stds from 0.40 to 6.59 in one run, so after the single factor
one channel had a std of 0.11 and sat near the noise floor of the schedule for most timesteps,
and which colours the U-Net learned depended on stage 1's draw. Normalizing each channel (as
later latent models do with per-channel latent statistics) gives every channel unit variance.

The map is affine per channel, so it folds exactly into the autoencoder's 1x1 ``quant_conv`` and
``post_quant_conv``: an exported model is an ordinary SD-layout model whose autoencoder emits
normalized latents, with scale factor 1 (``fold_into_autoencoder``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import Tensor

LATENT_NORMALIZATIONS = ("scale", "channel")
"""diffusion.latent_normalization: one scale factor for all channels (LDM), or per channel."""
MEAN_KEY, STD_KEY = "latent_mean", "latent_std"
"""The buffers of a ``LatentDiffusion`` that normalizes per channel (state-dict keys)."""


@torch.no_grad()
def channel_stats(latents: Iterable[Tensor], max_batches: int) -> tuple[Tensor, Tensor]:
    """(mean, std) per channel, each [C], over up to `max_batches` batches of [B, C, h, w] latents."""
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    flat = [z.float().transpose(0, 1).reshape(z.shape[1], -1) for z in itertools.islice(latents, max_batches)]
    if not flat:
        raise ValueError("no batches to compute the latent channel statistics from")
    values = torch.cat(flat, dim=1)
    mean, std = values.mean(dim=1), values.std(dim=1)
    if not bool((std > 0).all()):
        raise ValueError(f"latent channel stds are {std.tolist()}: the autoencoder's latents are degenerate")
    return mean, std


def normalize(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(z - mean) / std per channel of [B, C, h, w] latents."""
    return (z - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def denormalize(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """The inverse of ``normalize``."""
    return z * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)


@torch.no_grad()
def fold_into_autoencoder(state: dict[str, Tensor], mean: Tensor, std: Tensor) -> dict[str, Tensor]:
    """A KL autoencoder state dict whose latents are the normalized latents of `state`'s.

    The posterior N(mu, sigma^2) becomes N((mu - mean) / std, (sigma / std)^2): ``quant_conv``'s
    mean rows are divided by std (bias shifted by mean first) and its log-variance biases lowered
    by 2 log std; ``post_quant_conv`` takes z = std * z' + mean, so its input columns are multiplied
    by std and its bias gains W @ mean. Other tensors are shared, not copied.
    """
    channels = mean.numel()
    weight, bias = state["quant_conv.weight"].clone(), state["quant_conv.bias"].clone()
    if weight.shape[0] != 2 * channels:
        raise ValueError(f"quant_conv has {weight.shape[0]} outputs; {channels} latent channels need {2 * channels}")
    mean, std = mean.to(weight), std.to(weight)
    weight[:channels] /= std.view(-1, 1, 1, 1)
    bias[:channels] = (bias[:channels] - mean) / std
    bias[channels:] -= 2 * torch.log(std)
    post_weight = state["post_quant_conv.weight"]
    post_bias = state["post_quant_conv.bias"] + post_weight[:, :, 0, 0] @ mean
    return {
        **state,
        "quant_conv.weight": weight,
        "quant_conv.bias": bias,
        "post_quant_conv.weight": post_weight * std.view(1, -1, 1, 1),
        "post_quant_conv.bias": post_bias,
    }
