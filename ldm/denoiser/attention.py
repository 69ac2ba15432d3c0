"""Attention for the latent U-Net: the backend function, cross-attention and the spatial transformer.

Module and parameter names follow Stable Diffusion's ``ldm/modules/attention.py`` so that SD 1.x and
2.x weights load by key: ``to_q``/``to_k``/``to_v``/``to_out.0``, ``ff.net.0.proj``/``ff.net.2``,
``norm1``..``norm3``, ``proj_in``/``proj_out``.
"""

from __future__ import annotations

import functools
import logging
import math
from types import ModuleType
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ldm.memo import TensorMemo

logger = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("sdpa", "xformers", "math")
"""Names accepted by :func:`attention`."""

# Process-wide flag, declared as such: the xformers fallback is explained in one log line, not one per call.
_xformers_fallback_warned = False


@functools.cache
def _import_xformers_ops() -> Optional[ModuleType]:
    """``xformers.ops`` if it can be imported, else None (imported once)."""
    try:
        import xformers.ops
    except ImportError:
        return None
    return xformers.ops


def _warn_xformers_fallback(reason: str) -> None:
    global _xformers_fallback_warned
    if not _xformers_fallback_warned:
        _xformers_fallback_warned = True
        logger.warning("attention backend 'xformers' unavailable (%s); falling back to 'sdpa'", reason)


def _math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v in float32, returned in q's dtype: the reference implementation."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    weights = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale  # (b, heads, q, kv)
    out = torch.einsum("bhqk,bhkd->bhqd", weights.softmax(dim=-1), v.float())
    return out.to(q.dtype)


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "sdpa") -> Tensor:
    """Scaled dot-product attention on (batch, heads, tokens, head_dim) tensors.

    ``backend`` is "sdpa" (PyTorch's fused kernel), "xformers" (memory-efficient attention on CUDA;
    falls back to sdpa with one warning per process when unavailable) or "math" (explicit, float32).
    """
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "math":
        return _math_attention(q, k, v)
    if backend == "xformers":
        xops = _import_xformers_ops()
        if xops is None:
            _warn_xformers_fallback("xformers is not installed")
        elif q.device.type != "cuda":
            _warn_xformers_fallback(f"tensors are on {q.device.type}, xformers needs cuda")
        else:
            # xformers takes (batch, tokens, heads, head_dim)
            q, k, v = (rearrange(t, "b h n d -> b n h d").contiguous() for t in (q, k, v))
            out = xops.memory_efficient_attention(q, k, v)
            return rearrange(out, "b n h d -> b h n d")
        return F.scaled_dot_product_attention(q, k, v)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")


class CrossAttention(nn.Module):
    """Multi-head attention from query tokens to context tokens (self-attention when context is None)."""

    def __init__(
        self,
        query_dim: int,
        context_dim: Optional[int] = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        backend: str = "sdpa",
    ) -> None:
        super().__init__()
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"unknown attention backend {backend!r}; choose one of {', '.join(ATTENTION_BACKENDS)}"
            )
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.backend = backend
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self._context_keys_values: TensorMemo[tuple[Tensor, Tensor]] = TensorMemo()

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """x: (b, n, query_dim), context: (b, m, context_dim) or None -> (b, n, query_dim)."""
        if context is None:
            k, v = self.to_k(x), self.to_v(x)
        else:
            k, v = self._keys_values(context)
        q = self.to_q(x)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = attention(q, k, v, self.backend)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out(out)

    def _keys_values(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """to_k(context), to_v(context); in sampling, computed once for the run's context.

        Every step of a sampling run attends to the same text context, so its keys and values are
        the same on every step (ldm.memo.TensorMemo keeps them while the context and both weights
        are the same unchanged tensors, and never under autograd): SD 2's U-Net spent 12-15% of a
        sampling step at 16x16 latents on these projections (one CPU thread).
        """
        inputs = (context, self.to_k.weight, self.to_v.weight)
        return self._context_keys_values.get(inputs, lambda: (self.to_k(context), self.to_v(context)))


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020): one projection gives value and gate halves."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim_in) -> (..., dim_out)."""
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """The transformer MLP: GEGLU to mult*dim, dropout, linear back to dim (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim)."""
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the context, and a GEGLU MLP, each residual.

    With `disable_self_attn` (SD's, diffusers' ``only_cross_attention``) the first attention attends
    to the context too, as in the SD x4 upscaler's high-resolution levels.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        context_dim: int,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
        backend: str = "sdpa",
        disable_self_attn: bool = False,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.disable_self_attn = disable_self_attn
        first_context_dim = context_dim if disable_self_attn else None  # None: self-attention
        self.attn1 = CrossAttention(dim, first_context_dim, heads, dim_head, dropout, backend)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout, backend)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x: (b, n, dim), context: (b, m, context_dim) -> (b, n, dim)."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)

    def _forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x), context if self.disable_self_attn else None)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


def sincos_position_embedding(height: int, width: int, dim: int, device=None, dtype=None) -> Tensor:
    """Fixed 2D sine-cosine embedding of each pixel's (row, column) index, [height * width, dim] in
    row-major order (ViT/MAE's): the first half of the channels embeds the column, the second the row,
    each as sin and cos of the index at dim / 4 frequencies 1 / 10000 ** (i / (dim / 4))."""
    if dim % 4 != 0:
        raise ValueError(f"a 2D sine-cosine position embedding needs channels divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float64),
        torch.arange(width, device=device, dtype=torch.float64),
        indexing="ij",
    )

    def embed(index: Tensor) -> Tensor:
        angles = index.reshape(-1, 1) * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed(cols), embed(rows)], dim=1).to(dtype or torch.get_default_dtype())


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned on context tokens (Rombach et al. 2022).

    GroupNorm, project in, ``depth`` transformer blocks on (h w) tokens, project out (zero-initialised,
    so the block starts as the identity), residual. Projections are linear (SD 2) or 1x1 convs (SD 1).

    With ``position_embedding`` the tokens get a fixed 2D sine-cosine embedding of their pixel's place
    after the projection in (as DiT's and MMDiT's tokens do; SD's U-Nets have none, and know where a
    pixel is only from the convolutions' zero padding). No parameters: the weights keep SD's layout.
    """

    conditioned_on = "context"
    """The second input of ``forward`` (read by ``TimestepEmbedSequential``)."""

    def __init__(
        self,
        in_channels: int,
        heads: int,
        dim_head: int,
        context_dim: int,
        depth: int = 1,
        dropout: float = 0.0,
        use_linear: bool = True,
        use_checkpoint: bool = False,
        backend: str = "sdpa",
        disable_self_attn: bool = False,
        position_embedding: bool = False,
    ) -> None:
        super().__init__()
        if in_channels % 32 != 0:
            raise ValueError(f"SpatialTransformer channels {in_channels} are not divisible by 32 (GroupNorm)")
        inner_dim = heads * dim_head
        if position_embedding and inner_dim % 4 != 0:
            raise ValueError(f"position_embedding needs transformer widths divisible by 4, got {inner_dim}")
        self.position_embedding = position_embedding
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        if use_linear:
            self.proj_in: nn.Module = nn.Linear(in_channels, inner_dim)
            self.proj_out: nn.Module = nn.Linear(inner_dim, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
            self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim, heads, dim_head, context_dim, dropout, use_checkpoint, backend, disable_self_attn
            )
            for _ in range(depth)
        )
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x: (b, c, h, w), context: (b, m, context_dim) -> (b, c, h, w)."""
        h, w = x.shape[-2:]
        residual = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")  # one token per pixel
        if self.use_linear:
            x = self.proj_in(x)
        if self.position_embedding:
            x = x + sincos_position_embedding(h, w, x.shape[-1], x.device, x.dtype)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        if not self.use_linear:
            x = self.proj_out(x)
        # Residual first: the sum takes its (contiguous) layout, not the channels-last one of the
        # rearranged tokens, which made every later convolution convert its weights on each call.
        return residual + x
