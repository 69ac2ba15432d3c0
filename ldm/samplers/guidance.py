"""Classifier-free guidance (Ho & Salimans 2022): D = D_u + scale * (D_c - D_u), with guidance rescale.

The conditional and unconditional branches run as one batched call; the unconditional context is
the empty prompt's, or a negative prompt's. An image-conditioned model's image (a ``Conditioning``,
``ldm.conditioning.concat``) goes to both branches: guidance drops the text only, as SD's pipelines.
Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
Eq. 15-16) pulls the per-sample standard deviation of the guided prediction back toward the
conditional one's, which counters the over-exposure of large scales:

    x_rescaled = x_cfg * std(x_pos) / std(x_cfg)                  (Eq. 15)
    x_final    = phi * x_rescaled + (1 - phi) * x_cfg             (Eq. 16)

Here x is the denoised prediction D (the quantity samplers see). diffusers applies the same formula
to the network's raw output (eps or v), which gives different numbers for eps networks.

A guidance interval (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval Improves
Sample and Distribution Quality in Diffusion Models") guides only the steps whose sigma lies in
(low, high]; elsewhere the conditional prediction is used alone, one network call instead of two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch

from ldm.conditioning.concat import Context, as_conditioning, guidance_batch
from ldm.memo import TensorMemo


def check_guidance_interval(interval: Optional[Sequence[float]]) -> None:
    """Raise a one-line error unless `interval` is None or [low, high] with 0 <= low < high."""
    if interval is None:
        return
    if len(interval) != 2 or not 0 <= interval[0] < interval[1]:
        raise ValueError(
            f"guidance interval must be [low, high] sigmas with 0 <= low < high, got {list(interval)}"
        )


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Eq. 15-16 of Lin et al. 2024: blend `guided` with its copy rescaled to `cond`'s per-sample std."""
    if phi == 0:
        return guided
    dims = list(range(1, guided.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)  # Eq. 15
    return phi * rescaled + (1 - phi) * guided  # Eq. 16


class CFGDenoiser:
    """Wraps D(x, sigma, context) into a guided denoiser with the same call signature."""

    def __init__(
        self,
        denoiser: Callable[..., torch.Tensor],
        guidance_scale: float,
        guidance_rescale: float = 0.0,
        guidance_interval: Optional[Sequence[float]] = None,
    ):
        if guidance_scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {guidance_scale}")
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance rescale must be in [0, 1], got {guidance_rescale}")
        check_guidance_interval(guidance_interval)
        self.denoiser = denoiser
        self.guidance_scale = guidance_scale
        self.guidance_rescale = guidance_rescale
        self.guidance_interval = None if guidance_interval is None else tuple(guidance_interval)
        # The same tensor on every step of a run, so that the denoiser may reuse what it derives from it.
        self._batched_context: TensorMemo[Context] = TensorMemo()

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: Context,
        uncond_context: Optional[Context] = None,
    ) -> torch.Tensor:
        """Guided denoised estimate; the unguided conditional one when there is no unconditional context.

        `context` and `uncond_context` are text tokens or Conditionings; an unconditional context of
        text alone takes the conditional one's image.
        """
        if uncond_context is None or self.guidance_scale == 1.0:
            return self.denoiser(x, sigma, context)
        inside = None
        if self.guidance_interval is not None:
            low, high = self.guidance_interval
            inside = (sigma > low) & (sigma <= high)  # [B]
            if not inside.any():
                return self.denoiser(x, sigma, context)
        # [2B, ...]: unconditional first, conditional second
        inputs = [*as_conditioning(uncond_context).tensors(), *as_conditioning(context).tensors()]
        batched_context = self._batched_context.get(inputs, lambda: guidance_batch(uncond_context, context))
        out = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), batched_context)
        uncond, cond = out.chunk(2)
        guided = rescale_guidance(uncond + self.guidance_scale * (cond - uncond), cond, self.guidance_rescale)
        if inside is None or inside.all():
            return guided
        return torch.where(inside.view(-1, *[1] * (x.ndim - 1)), guided, cond)
