"""Tests for ldm/denoiser/blocks.py: timestep embedding, ResBlock, Downsample, Upsample."""

import math

import pytest
import torch
import torch.nn.functional as F

from ldm.denoiser.attention import SpatialTransformer
from ldm.denoiser.blocks import (
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    timestep_embedding,
)


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 1, 3])
    emb = timestep_embedding(t, 4)
    # dim 4: half = 2, freqs = (1, 10000 ** -0.5 = 0.01); layout (cos f0 t, cos f1 t, sin f0 t, sin f1 t)
    expected = torch.tensor(
        [
            [1.0, 1.0, 0.0, 0.0],
            [math.cos(1.0), math.cos(0.01), math.sin(1.0), math.sin(0.01)],
            [math.cos(3.0), math.cos(0.03), math.sin(3.0), math.sin(0.03)],
        ]
    )
    torch.testing.assert_close(emb, expected, atol=1e-6, rtol=0)


def test_timestep_embedding_fractional_and_odd_dim():
    # dim 7: half = 3, freqs = 10000 ** (-i / 3) = (1, 0.0464159, 0.00215443), then a zero column
    emb = timestep_embedding(torch.tensor([2.5]), 7)
    freqs = [1.0, 0.046415888, 0.0021544347]
    expected = [math.cos(2.5 * f) for f in freqs] + [math.sin(2.5 * f) for f in freqs] + [0.0]
    torch.testing.assert_close(emb, torch.tensor([expected]), atol=1e-6, rtol=0)


def test_normalization_rejects_channels_not_divisible_by_32():
    assert normalization(64).num_groups == 32 and normalization(64).eps == 1e-5
    with pytest.raises(ValueError, match="48 channels"):
        normalization(48)


def test_resblock_is_its_skip_connection_at_init():
    torch.manual_seed(0)
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    same = ResBlock(32, 16)
    assert isinstance(same.skip_connection, torch.nn.Identity)
    torch.testing.assert_close(same(x, emb), x, atol=0, rtol=0)
    wider = ResBlock(32, 16, out_channels=64)
    expected = F.conv2d(x, wider.skip_connection.weight, wider.skip_connection.bias)
    torch.testing.assert_close(wider(x, emb), expected, atol=1e-6, rtol=0)


def test_resblock_matches_functional_reference():
    torch.manual_seed(0)
    block = ResBlock(32, 16, out_channels=64)
    torch.nn.init.normal_(block.out_layers[3].weight, std=0.05)
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)

    def gn(t, norm):
        return F.group_norm(t, 32, norm.weight, norm.bias, 1e-5)

    conv_in, conv_out, lin = block.in_layers[2], block.out_layers[3], block.emb_layers[1]
    h = F.conv2d(F.silu(gn(x, block.in_layers[0])), conv_in.weight, conv_in.bias, padding=1)
    h = h + F.linear(F.silu(emb), lin.weight, lin.bias)[:, :, None, None]
    h = F.conv2d(F.silu(gn(h, block.out_layers[0])), conv_out.weight, conv_out.bias, padding=1)
    expected = F.conv2d(x, block.skip_connection.weight, block.skip_connection.bias) + h
    torch.testing.assert_close(block(x, emb), expected, atol=1e-5, rtol=0)


def test_downsample_and_upsample():
    torch.manual_seed(0)
    x = torch.randn(1, 32, 6, 4)
    down = Downsample(32)
    torch.testing.assert_close(
        down(x), F.conv2d(x, down.op.weight, down.op.bias, stride=2, padding=1), atol=1e-6, rtol=0
    )
    assert down(x).shape == (1, 32, 3, 2)
    up = Upsample(32)
    nearest = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # each pixel -> 2x2
    torch.testing.assert_close(
        up(x), F.conv2d(nearest, up.conv.weight, up.conv.bias, padding=1), atol=1e-6, rtol=0
    )


def test_timestep_embed_sequential_routes_embedding_and_context():
    torch.manual_seed(0)
    res, transformer = ResBlock(32, 16, 64), SpatialTransformer(64, 2, 32, context_dim=8)
    torch.nn.init.normal_(transformer.proj_out.weight, std=0.05)
    seq = TimestepEmbedSequential(res, transformer, Downsample(64))
    x, emb, context = torch.randn(2, 32, 4, 4), torch.randn(2, 16), torch.randn(2, 3, 8)
    expected = seq[2](transformer(res(x, emb), context))
    torch.testing.assert_close(seq(x, emb, context), expected, atol=0, rtol=0)
