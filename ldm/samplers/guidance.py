"""Classifier-free guidance (Ho & Salimans 2022): D = D_u + scale * (D_c - D_u).

The conditional and unconditional branches run as one batched call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch


class CFGDenoiser:
    """Wraps D(x, sigma, context) into a guided denoiser with the same call signature."""

    def __init__(self, denoiser: Callable[..., torch.Tensor], guidance_scale: float):
        if guidance_scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {guidance_scale}")
        self.denoiser = denoiser
        self.guidance_scale = guidance_scale

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor,
        uncond_context: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if uncond_context is None or self.guidance_scale == 1.0:
            return self.denoiser(x, sigma, context)
        # [2B, ...]: unconditional first, conditional second
        out = self.denoiser(
            torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([uncond_context, context])
        )
        uncond, cond = out.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)
