"""Latent statistics of a trained autoencoder: the scale factor (1 / std, LDM's scale_by_std) and
per-channel mean and std, measured once after stage 1 and stored with its checkpoint, so that
stage 2 uses them instead of re-estimating.

Stored as ``checkpoint["latent_stats"] = {"scale_factor": float, "mean": [float], "std": [float],
"num_images": int}``: plain types, readable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ldm.autoencoder.model import KLAutoencoder
from ldm.diffusion.scaling import scale_factor_of_latents

CHECKPOINT_KEY = "latent_stats"
"""Where the statistics live in an autoencoder checkpoint dict."""


@torch.no_grad()
def compute_latent_stats(
    autoencoder: KLAutoencoder, images: Iterable[Tensor], max_batches: int, seed: int = 0
) -> dict[str, Any]:
    """Statistics of posterior samples z ~ q(z|x) over up to `max_batches` image batches.

    scale_factor = 1 / std over all elements (``ldm.diffusion.scaling.scale_factor_of_latents``);
    mean and std per latent channel. The posterior noise comes from a generator seeded with `seed`.
    """
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    device = next(autoencoder.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    latents, num_images = [], 0
    for index, x in enumerate(images):
        if index >= max_batches:
            break
        z = autoencoder.encode(x.to(device)).sample(generator).float()  # [B, C, h, w]
        latents.append(z.transpose(0, 1).reshape(z.shape[1], -1))  # [C, B*h*w]
        num_images += x.shape[0]
    if not latents:
        raise ValueError("no batches to compute latent statistics from")
    flat = torch.cat(latents, dim=1)  # [C, N]
    return {
        "scale_factor": scale_factor_of_latents([flat], max_batches=1),
        "mean": [float(v) for v in flat.mean(dim=1)],
        "std": [float(v) for v in flat.std(dim=1)],
        "num_images": num_images,
    }


def stored_latent_stats(checkpoint: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The statistics kept in a checkpoint dict, or None."""
    stats = checkpoint.get(CHECKPOINT_KEY)
    return stats if isinstance(stats, dict) and "scale_factor" in stats else None


def _stored_stats(path: str | Path | None) -> Optional[dict[str, Any]]:
    if not path:
        return None
    from ldm.weights.checkpoint import read_checkpoint

    return stored_latent_stats(read_checkpoint(path))


def stored_scale_factor(path: str | Path | None) -> Optional[float]:
    """The scale factor stored with the stage-1 checkpoint at `path` (None: no path, or none stored)."""
    stats = _stored_stats(path)
    return float(stats["scale_factor"]) if stats is not None else None


def stored_channel_stats(path: str | Path | None) -> Optional[tuple[Tensor, Tensor]]:
    """(mean, std) per latent channel stored with the stage-1 checkpoint at `path` (None: none stored)."""
    stats = _stored_stats(path)
    if stats is None or "mean" not in stats or "std" not in stats:
        return None
    return torch.tensor(stats["mean"]), torch.tensor(stats["std"])
