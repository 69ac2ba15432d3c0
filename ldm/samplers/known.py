"""Known regions: a denoiser wrapper that predicts given clean latents wherever they are known.

For inpainting that keeps the unmasked part exactly as the autoencoder encodes it (SD's pipelines
paste the input back instead, after or during sampling): wherever ``keep`` is 1 the wrapped
denoiser's estimate of the clean latent is replaced by the ``known`` latent, elsewhere it is the
model's. The sampler is unchanged; it steps toward that estimate, so the region follows a noisy path
to the known latent and the redrawn part is denoised beside it. Samplers whose last step returns
the denoised estimate (sigma 0) end exactly on the known latents there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class KnownRegion:
    """Wraps D(x, sigma, ...) into D'(x, sigma, ...) = keep * known + (1 - keep) * D(x, sigma, ...)."""

    def __init__(self, denoiser: Callable[..., torch.Tensor], known: torch.Tensor, keep: torch.Tensor):
        if keep.ndim != known.ndim or keep.shape[0] != known.shape[0] or keep.shape[-2:] != known.shape[-2:]:
            raise ValueError(
                f"keep {tuple(keep.shape)} must match the known latents {tuple(known.shape)} "
                "in batch and size (one channel or all)"
            )
        if keep.min() < 0 or keep.max() > 1:
            raise ValueError("keep must be in [0, 1]")
        self.denoiser = denoiser
        self.known = known
        self.keep = keep

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        denoised = self.denoiser(x, sigma, *args, **kwargs)
        return torch.lerp(denoised, self.known.to(denoised.dtype), self.keep.to(denoised.dtype))
