"""The latent scale factor: 1 / std of the autoencoder's latents (LDM's scale_by_std).

Diffusion assumes data of roughly unit variance; scaling the latents by this factor makes the
noise schedule mean the same thing whatever the autoencoder's latent statistics are.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def estimate_scale_factor(autoencoder: nn.Module, images: Iterable[torch.Tensor], max_batches: int) -> float:
    """1 / std over all elements of posterior samples of up to `max_batches` image batches."""
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    device = next(autoencoder.parameters()).device
    latents = []
    for i, x in enumerate(images):
        if i >= max_batches:
            break
        latents.append(autoencoder.encode(x.to(device)).sample().flatten().float())
    if not latents:
        raise ValueError("no batches to estimate the latent scale factor from")
    std = torch.cat(latents).std().item()
    if not std > 0:
        raise ValueError(f"latent std is {std}: the autoencoder's latents are degenerate")
    return 1.0 / std
