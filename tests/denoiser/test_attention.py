"""Tests for ldm/denoiser/attention.py: backends, cross-attention, GEGLU, the spatial transformer."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from ldm.denoiser import attention as attention_module
from ldm.denoiser.attention import (
    GEGLU,
    CrossAttention,
    SpatialTransformer,
    attention,
    sincos_position_embedding,
)


def _qkv(seed: int = 0, q_len: int = 7, kv_len: int = 5) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, q_len, 16, generator=g)  # (batch, heads, tokens, head_dim)
    k = torch.randn(2, 3, kv_len, 16, generator=g)
    v = torch.randn(2, 3, kv_len, 16, generator=g)
    return q, k, v


def test_sdpa_matches_math_with_different_query_and_key_lengths():
    q, k, v = _qkv()
    out_sdpa = attention(q, k, v, "sdpa")
    out_math = attention(q, k, v, "math")
    assert out_sdpa.shape == (2, 3, 7, 16)
    torch.testing.assert_close(out_sdpa, out_math, atol=1e-5, rtol=0)


def test_math_backend_closed_forms():
    _, k, v = _qkv(q_len=4)
    # a zero query weighs every key equally: the output is the mean of the values
    q = torch.zeros(2, 3, 4, 16)
    out = attention(q, k, v, "math")
    torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand(-1, -1, 4, -1), atol=1e-6, rtol=0)
    # two keys, hand-computed weights: q.k = (0, 2 * 4), scaled by 1/sqrt(4)
    q = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)
    k = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0]]).view(1, 1, 2, 4)
    v = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]).view(1, 1, 2, 4)
    w1 = math.exp(2.0) / (1.0 + math.exp(2.0))
    expected = torch.tensor([1.0 - w1, w1, 0.0, 0.0]).view(1, 1, 1, 4)
    torch.testing.assert_close(attention(q, k, v, "math"), expected, atol=1e-6, rtol=0)


def test_math_backend_computes_in_float32_and_returns_input_dtype():
    q, k, v = (t.to(torch.bfloat16) for t in _qkv())
    out = attention(q, k, v, "math")
    assert out.dtype == torch.bfloat16
    reference = attention(q.float(), k.float(), v.float(), "math")
    torch.testing.assert_close(out.float(), reference, atol=1e-2, rtol=0)  # only the final bf16 rounding


@pytest.mark.skipif(
    attention_module._import_xformers_ops() is None or not torch.cuda.is_available(),
    reason="needs xformers and CUDA",
)
def test_xformers_matches_math_on_cuda():
    q, k, v = (t.cuda() for t in _qkv())
    torch.testing.assert_close(attention(q, k, v, "xformers"), attention(q, k, v, "math"), atol=1e-4, rtol=0)


def test_xformers_fallback_warns_once_and_matches_math(monkeypatch, caplog):
    monkeypatch.setattr(attention_module, "_xformers_fallback_warned", False)
    q, k, v = _qkv()  # CPU tensors: xformers is never used, installed or not
    with caplog.at_level(logging.WARNING, logger="ldm.denoiser.attention"):
        first = attention(q, k, v, "xformers")
        second = attention(q, k, v, "xformers")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "falling back to 'sdpa'" in warnings[0].getMessage()
    reference = attention(q, k, v, "math")
    torch.testing.assert_close(first, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(second, reference, atol=1e-5, rtol=0)


def test_unknown_backend_raises_and_lists_choices():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="sdpa, xformers, math"):
        attention(q, k, v, "flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        CrossAttention(32, backend="flash")


def test_cross_attention_matches_per_head_reference():
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=32, context_dim=24, heads=2, dim_head=8, backend="sdpa")
    x, context = torch.randn(3, 6, 32), torch.randn(3, 5, 24)
    q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)  # (b, n, 16)
    heads = []
    for h in range(2):
        sl = slice(8 * h, 8 * (h + 1))
        weights = (q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(8)).softmax(-1)  # (b, 6, 5)
        heads.append(weights @ v[..., sl])
    expected = F.linear(torch.cat(heads, dim=-1), attn.to_out[0].weight, attn.to_out[0].bias)
    torch.testing.assert_close(attn(x, context), expected, atol=1e-5, rtol=0)
    assert attn.to_k.weight.shape == (16, 24) and attn.to_q.bias is None


def test_cross_attention_depends_on_context_and_self_attention_uses_x():
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=32, context_dim=32, heads=4, dim_head=8)
    x, context = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    out = attn(x, context)
    assert (out - attn(x, context + 1.0)).abs().max() > 1e-3
    torch.testing.assert_close(attn(x), attn(x, x), atol=0, rtol=0)


def test_geglu_closed_form():
    geglu = GEGLU(2, 1)
    with torch.no_grad():
        geglu.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # value = x0, gate = x1
        geglu.proj.bias.zero_()
    x = torch.tensor([[3.0, 1.0]])
    gelu_1 = 0.5 * (1.0 + math.erf(1.0 / math.sqrt(2.0)))  # exact GELU(1) = Phi(1)
    torch.testing.assert_close(geglu(x), torch.tensor([[3.0 * gelu_1]]), atol=1e-6, rtol=0)


def test_spatial_transformer_is_identity_at_init():
    torch.manual_seed(0)
    block = SpatialTransformer(64, heads=2, dim_head=32, context_dim=16)
    x = torch.randn(2, 64, 4, 4)
    torch.testing.assert_close(block(x, torch.randn(2, 3, 16)), x, atol=0, rtol=0)


def test_spatial_transformer_linear_and_conv_projections_agree():
    torch.manual_seed(0)
    linear = SpatialTransformer(64, heads=2, dim_head=32, context_dim=16, use_linear=True)
    conv = SpatialTransformer(64, heads=2, dim_head=32, context_dim=16, use_linear=False)
    with torch.no_grad():
        torch.nn.init.normal_(linear.proj_out.weight, std=0.05)
        state = linear.state_dict()
        for name in ("proj_in.weight", "proj_out.weight"):
            state[name] = state[name][:, :, None, None]  # (out, in) -> (out, in, 1, 1)
        conv.load_state_dict(state)
    x, context = torch.randn(2, 64, 4, 3), torch.randn(2, 5, 16)
    out = linear(x, context)
    assert (out - x).abs().max() > 1e-2  # the transformer is active
    torch.testing.assert_close(conv(x, context), out, atol=1e-5, rtol=0)


def test_sincos_position_embedding_closed_form():
    # dim 8: frequencies 1 and 1/100; channels sin/cos of the column at both, then of the row.
    table = sincos_position_embedding(2, 3, 8, dtype=torch.float64)
    assert table.shape == (6, 8)
    row, col = 1, 2  # token 1 * 3 + 2
    expected = [math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100)]
    expected += [math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100)]
    torch.testing.assert_close(table[5], torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_embedding(2, 2, 6)


def test_position_embedding_breaks_the_transformers_pixel_symmetry_only():
    # Without a position embedding the transformer cannot tell where a pixel is: flipping the input
    # flips the output. With it, it can; the parameters (SD's layout) are the same.
    torch.manual_seed(0)
    plain = SpatialTransformer(32, 2, 16, context_dim=8)
    placed = SpatialTransformer(32, 2, 16, context_dim=8, position_embedding=True)
    with torch.no_grad():
        torch.nn.init.normal_(plain.proj_out.weight, std=0.1)
    placed.load_state_dict(plain.state_dict())
    x, context = torch.randn(2, 32, 4, 5), torch.randn(2, 3, 8)
    flip = lambda t: t.flip(-1)  # noqa: E731
    torch.testing.assert_close(plain(flip(x), context), flip(plain(x, context)), atol=1e-5, rtol=1e-5)
    assert (placed(flip(x), context) - flip(placed(x, context))).abs().max() > 1e-2
    assert (placed(x, context) - plain(x, context)).abs().max() > 1e-2


def test_spatial_transformer_returns_its_input_layout():
    # A channels-last result would make each following convolution convert its weights per call
    # (and DDP warn that gradient strides do not match its buckets).
    block = SpatialTransformer(32, 2, 16, context_dim=8)
    with torch.no_grad():
        torch.nn.init.normal_(block.proj_out.weight)
        out = block(torch.randn(2, 32, 4, 4), torch.randn(2, 3, 8))
    assert out.is_contiguous()


def test_cross_attention_projects_a_sampling_runs_context_once():
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=16, context_dim=8, heads=2, dim_head=8)
    projections = []
    attn.to_k.register_forward_hook(lambda *_: projections.append(1))
    x, context = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    with torch.no_grad():
        first = attn(x, context)
        second = attn(x + 1, context)  # the next step: new latents, the same context
        assert len(projections) == 1
        fresh = CrossAttention(query_dim=16, context_dim=8, heads=2, dim_head=8)
        fresh.load_state_dict(attn.state_dict())
        assert torch.equal(first, fresh(x, context)) and torch.equal(second, fresh(x + 1, context))
        attn.to_v.weight.mul_(2)  # weights changed in place (an optimizer or EMA swap): recomputed
        fresh.to_v.weight.mul_(2)
        assert torch.equal(attn(x, context), fresh(x, context)) and len(projections) == 2
    attn(x, context).sum().backward()  # with autograd: projected on every call, gradients reach to_k
    assert len(projections) == 3 and attn.to_k.weight.grad.abs().sum() > 0
