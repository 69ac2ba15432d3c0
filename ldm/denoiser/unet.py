"""The latent U-Net with cross-attention of Stable Diffusion (Rombach et al. 2022), SD 1.x/2.x key layout.

An encoder of residual blocks (with spatial transformers at chosen downsampling factors) and
stride-2 convs, a middle block, and a decoder that concatenates the matching encoder activation
before each residual block. The state dict matches SD's ``model.diffusion_model.*`` keys exactly.
Image-conditioned models (SD x4 upscaler, SD inpainting) take wider inputs (the image conditioning
concatenated to the latent, ``ldm.conditioning.concat``); the upscaler also embeds a class label,
the noise level of its input, into the timestep embedding (``label_emb``, SD's ``num_classes``).

A guidance-distilled student (Meng et al. 2023) also takes the classifier-free guidance scale w:
with ``guidance_embed_dim`` > 0, sinusoidal features of w pass through a small MLP
(``guidance_embed.*``, the only keys SD's layout lacks) whose output is added to the time embedding.
Its last layer starts at zero, so a student built from a teacher's weights starts as the teacher's
conditional model. With 0 (the default) there is no such module and no such keys.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from ldm.config import UNetConfig
from ldm.denoiser.attention import ATTENTION_BACKENDS, SpatialTransformer
from ldm.denoiser.blocks import (
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    timestep_embedding,
)
from ldm.denoiser.conv import Conv2d

logger = logging.getLogger(__name__)

GUIDANCE_EMBED_SCALE = 1000.0
"""w is embedded as a timestep of w * 1000 (as LCM's pipeline embeds it), so that scales 1-15 span
the frequencies that the timesteps 0-999 do."""


class UNetModel(nn.Module):
    """eps/v-prediction U-Net: (x_t, t, context tokens) -> a tensor shaped like x_t (with out_channels)."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        num_head_channels: int,
        num_heads: int,
        transformer_depth: int,
        context_dim: int,
        use_linear_in_transformer: bool,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
        attention_backend: str = "sdpa",
        concat_channels: int = 0,
        num_classes: Optional[int] = None,
        disable_self_attentions: Optional[Sequence[bool]] = None,
        guidance_embed_dim: int = 0,
        position_embedding: bool = False,
    ) -> None:
        super().__init__()
        channel_mult = list(channel_mult)
        attention_resolutions = list(attention_resolutions)
        no_self_attention = list(disable_self_attentions or [False] * len(channel_mult))
        if len(no_self_attention) != len(channel_mult):
            raise ValueError(
                f"disable_self_attentions has {len(no_self_attention)} entries for {len(channel_mult)} levels"
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be positive or null, got {num_classes}")
        if not 0 <= concat_channels < in_channels:
            raise ValueError(
                f"concat_channels must be in [0, in_channels={in_channels}), got {concat_channels}"
            )
        self._check_arguments(
            model_channels,
            channel_mult,
            num_res_blocks,
            attention_resolutions,
            num_head_channels,
            num_heads,
            transformer_depth,
            attention_backend,
        )
        if guidance_embed_dim < 0:
            raise ValueError(f"guidance_embed_dim must be >= 0 (0: no guidance), got {guidance_embed_dim}")
        self.in_channels = in_channels
        self.concat_channels = concat_channels  # of in_channels: image conditioning after the latent's
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.context_dim = context_dim
        self.num_classes = num_classes
        self.downsampling_factor = 2 ** (len(channel_mult) - 1)
        time_embed_dim = 4 * model_channels

        def resblock(channels: int, out: int) -> ResBlock:
            return ResBlock(channels, time_embed_dim, out, dropout, use_checkpoint)

        def transformer(channels: int, level: Optional[int] = None) -> SpatialTransformer:
            if num_heads == -1:  # SD 2: fixed head width
                heads, dim_head = channels // num_head_channels, num_head_channels
            else:  # SD 1: fixed head count
                heads, dim_head = num_heads, channels // num_heads
            return SpatialTransformer(
                channels,
                heads,
                dim_head,
                context_dim,
                depth=transformer_depth,
                use_linear=use_linear_in_transformer,
                use_checkpoint=use_checkpoint,
                backend=attention_backend,
                disable_self_attn=level is not None and no_self_attention[level],  # the middle: never
                position_embedding=position_embedding,
            )

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)
        self.guidance_embed_dim = guidance_embed_dim
        self.guidance_embed: Optional[nn.Sequential] = None
        if guidance_embed_dim > 0:  # w's features -> an MLP -> added to the time embedding (Meng et al. 2023)
            self.guidance_embed = nn.Sequential(
                nn.Linear(guidance_embed_dim, time_embed_dim),
                nn.SiLU(),
                nn.Linear(time_embed_dim, time_embed_dim),
            )
            nn.init.zeros_(self.guidance_embed[2].weight)  # starts as the model without w
            nn.init.zeros_(self.guidance_embed[2].bias)

        # Encoder: input_blocks.0 is conv_in; then per level num_res_blocks x [ResBlock, (transformer)],
        # and a Downsample after every level but the last. Each block's output is kept as a skip.
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(Conv2d(in_channels, model_channels, 3, padding=1))]
        )
        skip_channels = [model_channels]
        ch, factor = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, mult * model_channels)]
                ch = mult * model_channels
                if factor in attention_resolutions:
                    layers.append(transformer(ch, level))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                factor *= 2

        self.middle_block = TimestepEmbedSequential(resblock(ch, ch), transformer(ch), resblock(ch, ch))

        # Decoder: per level (deepest first) num_res_blocks + 1 x [ResBlock on cat(h, skip), (transformer)],
        # with an Upsample closing every level but the first.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if factor in attention_resolutions:
                    layers.append(transformer(ch, level))
                if level != 0 and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    factor //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), Conv2d(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    @staticmethod
    def _check_arguments(
        model_channels: int,
        channel_mult: list[int],
        num_res_blocks: int,
        attention_resolutions: list[int],
        num_head_channels: int,
        num_heads: int,
        transformer_depth: int,
        attention_backend: str,
    ) -> None:
        if not channel_mult:
            raise ValueError("channel_mult must name at least one level")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be at least 1, got {num_res_blocks}")
        if transformer_depth < 1:
            raise ValueError(f"transformer_depth must be at least 1, got {transformer_depth}")
        if attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"unknown attention_backend {attention_backend!r}; choose one of {', '.join(ATTENTION_BACKENDS)}"
            )
        factors = [2**level for level in range(len(channel_mult))]
        unreached = sorted(set(attention_resolutions) - set(factors))
        if unreached:
            raise ValueError(
                f"attention_resolutions {unreached} are not downsampling factors of this U-Net {factors}"
            )
        if num_heads == -1 and num_head_channels <= 0:
            raise ValueError(
                f"num_head_channels must be positive when num_heads is -1, got {num_head_channels}"
            )
        if num_heads != -1 and num_heads <= 0:
            raise ValueError(f"num_heads must be positive or -1, got {num_heads}")
        for mult in [1, *channel_mult]:  # 1: the conv_in output
            ch = mult * model_channels
            if ch % 32 != 0:
                raise ValueError(
                    f"level channels {ch} (model_channels {model_channels} x {mult}) are not divisible by "
                    "the 32 groups of GroupNorm"
                )
            head_size = num_head_channels if num_heads == -1 else num_heads
            if ch % head_size != 0:
                what = "num_head_channels" if num_heads == -1 else "num_heads"
                raise ValueError(f"level channels {ch} are not divisible by {what} {head_size}")

    @classmethod
    def from_config(cls, cfg: UNetConfig) -> UNetModel:
        """Build the U-Net described by a :class:`~ldm.config.UNetConfig`."""
        return cls(
            in_channels=cfg.in_channels,
            out_channels=cfg.out_channels,
            model_channels=cfg.model_channels,
            channel_mult=list(cfg.channel_mult),
            num_res_blocks=cfg.num_res_blocks,
            attention_resolutions=list(cfg.attention_resolutions),
            num_head_channels=cfg.num_head_channels,
            num_heads=cfg.num_heads,
            transformer_depth=cfg.transformer_depth,
            context_dim=cfg.context_dim,
            use_linear_in_transformer=cfg.use_linear_in_transformer,
            dropout=cfg.dropout,
            use_checkpoint=cfg.use_checkpoint,
            attention_backend=cfg.attention_backend,
            concat_channels=cfg.concat_channels,
            num_classes=cfg.num_classes,
            disable_self_attentions=cfg.disable_self_attentions,
            guidance_embed_dim=cfg.guidance_embed_dim,
            position_embedding=cfg.position_embedding,
        )

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        guidance: Optional[Tensor] = None,
        class_labels: Optional[Tensor] = None,
    ) -> Tensor:
        """x: (b, in_channels, h, w), timesteps: (b,) int or float, context: (b, tokens, context_dim),
        guidance (only with guidance_embed_dim > 0): (b,) or a scalar, class_labels: (b,) int, given
        exactly when the network has num_classes -> (b, out_channels, h, w)."""
        self._check_inputs(x, timesteps, context, guidance)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))  # (b, 4 mc)
        if self.num_classes is not None or class_labels is not None:
            emb = emb + self._label_embedding(class_labels, x.shape[0]).to(emb.dtype)  # SD: + label_emb(y)
        if self.guidance_embed is not None:
            w = guidance.expand(x.shape[0]) if guidance.ndim == 0 else guidance
            features = timestep_embedding(w * GUIDANCE_EMBED_SCALE, self.guidance_embed_dim).to(x.dtype)
            emb = emb + self.guidance_embed(features)  # (b, 4 mc)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)  # channels: current + skip
        return self.out(h)

    def _label_embedding(self, class_labels: Optional[Tensor], batch: int) -> Tensor:
        if self.num_classes is None:
            raise ValueError("class_labels were given, but this U-Net has no class embedding (num_classes)")
        if class_labels is None:
            raise ValueError(f"this U-Net embeds a class label (num_classes={self.num_classes}): none given")
        if class_labels.shape != (batch,) or class_labels.is_floating_point():
            got = f"{tuple(class_labels.shape)} {class_labels.dtype}"
            raise ValueError(f"class_labels must be ({batch},) integers, got {got}")
        return self.label_emb(class_labels)

    def _check_inputs(
        self, x: Tensor, timesteps: Tensor, context: Tensor, guidance: Optional[Tensor]
    ) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (batch, {self.in_channels}, height, width), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        f = self.downsampling_factor
        if h % f or w % f:
            raise ValueError(f"input size {h}x{w} is not divisible by the U-Net's downsampling factor {f}")
        if timesteps.ndim > 1 or (timesteps.ndim == 1 and timesteps.shape[0] != b):
            raise ValueError(f"timesteps must have shape ({b},) or be a scalar, got {tuple(timesteps.shape)}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != self.context_dim:
            raise ValueError(
                f"context must be (batch={b}, tokens, context_dim={self.context_dim}), got {tuple(context.shape)}"
            )
        if (guidance is None) != (self.guidance_embed is None):
            raise ValueError(
                "this U-Net takes the guidance scale as an input (guidance_embed_dim > 0): pass guidance"
                if guidance is None
                else "this U-Net has no guidance input (guidance_embed_dim = 0): guidance must be None"
            )
        if guidance is not None and (guidance.ndim > 1 or (guidance.ndim == 1 and guidance.shape[0] != b)):
            raise ValueError(f"guidance must have shape ({b},) or be a scalar, got {tuple(guidance.shape)}")
