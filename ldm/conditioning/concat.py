"""What the U-Net is conditioned on: the text's tokens, and optionally an image concatenated to its input.

LDM conditions on an image by concatenating it, at the latent's size, to the noisy latent as extra
input channels (Rombach et al. 2022, Sec. 3.3, "concat"); Stable Diffusion's x4 upscaler concatenates
the noise-augmented low-resolution RGB image and embeds its noise level like a class label, SD's
inpainting models a mask and the masked image's latent. Here that is a typed structure instead of
LDM's ``'concat' | 'crossattn' | 'hybrid'`` keys:

    Conditioning(context=text tokens (b, n, d),
                 image=ImageConditioning(concat=(b, c, h, w), class_labels=(b,)))

A ``Conditioning`` travels where the text context did: as ``context`` through ``extra_args`` of every
sampler, into the guidance wrapper and the denoiser wrapper, so samplers need not know about it.
Only the network call (:func:`call_network`) takes it apart. A plain text tensor is a
``Conditioning`` without image, so text-to-image code is unchanged. Classifier-free guidance drops
the text only (:func:`guidance_batch`): the image goes to both branches, as in SD's pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ImageConditioning:
    """An image the U-Net is conditioned on: channels concatenated to its input, and a class label."""

    concat: Tensor
    """(b, c, h, w) at the latent's size, concatenated after the latent's channels (in SD's order)."""
    class_labels: Optional[Tensor] = None
    """(b,) integers embedded beside the timestep (SD x4: the low-resolution input's noise level)."""

    def tensors(self) -> list[Tensor]:
        """The tensors held, in a fixed order."""
        return [self.concat] + ([] if self.class_labels is None else [self.class_labels])

    def repeat(self, times: int) -> ImageConditioning:
        """The same conditioning for `times` copies of the batch, stacked (for batched guidance)."""
        labels = None if self.class_labels is None else self.class_labels.repeat(times)
        return ImageConditioning(self.concat.repeat(times, 1, 1, 1), labels)


@dataclass(frozen=True)
class Conditioning:
    """Text tokens for cross-attention, and optionally an image (see the module docstring)."""

    context: Tensor
    """(b, tokens, dim): the text encoder's states."""
    image: Optional[ImageConditioning] = None

    def tensors(self) -> list[Tensor]:
        """The tensors held, in a fixed order (what a memo of a sampling run keys on)."""
        return [self.context] + ([] if self.image is None else self.image.tensors())


Context = Union[Tensor, Conditioning]
"""What samplers pass as ``context``: text tokens alone, or a :class:`Conditioning`."""


def as_conditioning(context: Context) -> Conditioning:
    """`context` as a Conditioning (a tensor is text alone)."""
    return context if isinstance(context, Conditioning) else Conditioning(context)


def call_network(
    network: nn.Module, x: Tensor, timesteps: Tensor, context: Context, guidance: Optional[Tensor] = None
) -> Tensor:
    """``network(cat(x, concat), timesteps, text[, class_labels=...][, guidance=...])``: x is the (scaled)
    noisy latent; the image's channels follow it unscaled (LDM's DiffusionWrapper: ``cat([x] + c_concat,
    dim=1)``); `guidance`, the scale w of a guidance-distilled network, is passed on when given."""
    conditioning = as_conditioning(context)
    image = conditioning.image
    extra = {} if guidance is None else {"guidance": guidance}
    if image is None:
        return network(x, timesteps, conditioning.context, **extra)
    if image.concat.shape[0] != x.shape[0] or image.concat.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"the concatenated image conditioning {tuple(image.concat.shape)} does not match the latent "
            f"{tuple(x.shape)} in batch and size"
        )
    x = torch.cat([x, image.concat.to(x.dtype)], dim=1)  # channels: latent, then image conditioning
    if image.class_labels is not None:
        extra["class_labels"] = image.class_labels
    return network(x, timesteps, conditioning.context, **extra)


def guidance_batch(uncond: Context, cond: Context) -> Context:
    """The [unconditional; conditional] batch of classifier-free guidance.

    The text differs between the branches; the image conditioning of `cond` goes to both when
    `uncond` is text alone (SD: only the prompt is dropped), else each branch keeps its own.
    """
    if not isinstance(cond, Conditioning) and not isinstance(uncond, Conditioning):
        return torch.cat([uncond, cond])
    uncond, cond = as_conditioning(uncond), as_conditioning(cond)
    context = torch.cat([uncond.context, cond.context])
    if cond.image is None and uncond.image is None:
        return Conditioning(context)
    if uncond.image is None or uncond.image is cond.image:
        return Conditioning(context, cond.image.repeat(2))
    if cond.image is None:
        raise ValueError("the unconditional branch has image conditioning but the conditional one has none")
    labels = (uncond.image.class_labels, cond.image.class_labels)
    if (labels[0] is None) != (labels[1] is None):
        raise ValueError("class labels are given for one guidance branch but not the other")
    concat = torch.cat([uncond.image.concat, cond.image.concat])
    return Conditioning(context, ImageConditioning(concat, None if labels[0] is None else torch.cat(labels)))
