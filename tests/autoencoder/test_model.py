"""Tests for ldm/autoencoder/model.py."""

import pytest
import torch
from torch import nn

from ldm.autoencoder.model import AttnBlock, Downsample, KLAutoencoder, ResnetBlock, Upsample
from ldm.config import AutoencoderConfig

TINY = dict(
    embed_dim=4,
    z_channels=4,
    resolution=32,
    in_channels=3,
    out_channels=3,
    ch=32,
    ch_mult=[1, 2, 2],
    num_res_blocks=1,
    attn_resolutions=[],
    dropout=0.0,
)


def test_sd_kl_f8_parameter_count_keys_and_shapes():
    with torch.device("meta"):
        model = KLAutoencoder.from_config(AutoencoderConfig())  # defaults are SD's kl-f8
    assert sum(p.numel() for p in model.parameters()) == 83_653_863  # the published SD VAE count
    state = model.state_dict()
    # A ResnetBlock holds 8 tensors (norm1, conv1, norm2, conv2: weight + bias), 10 with nin_shortcut;
    # an AttnBlock 10 (norm, q, k, v, proj_out); every other conv or norm 2.
    # encoder: conv_in 2 + down blocks (16 + 18 + 18 + 16) + 3 downsamples 6
    #          + mid (8 + 10 + 8) + norm_out 2 + conv_out 2                        = 106
    # decoder: conv_in 2 + mid 26 + up blocks, 3 per level (26 + 26 + 24 + 24)
    #          + 3 upsamples 6 + norm_out 2 + conv_out 2                           = 138
    # quant_conv 2 + post_quant_conv 2                                             = 4
    assert sum(k.startswith("encoder.") for k in state) == 106
    assert sum(k.startswith("decoder.") for k in state) == 138
    assert len(state) == 248
    expected_shapes = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.proj_out.bias": (512,),
        "encoder.conv_out.weight": (8, 512, 3, 3),
        "decoder.conv_in.weight": (512, 4, 3, 3),
        "decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.1.block.2.conv2.weight": (256, 256, 3, 3),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.norm_out.weight": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
        "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (4, 4, 1, 1),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    # Blocks whose channels do not change have no shortcut; the last level has no downsample,
    # level 0 of the decoder no upsample; no attention outside the mid blocks (attn_resolutions []).
    for absent in [
        "encoder.down.0.block.0.nin_shortcut.weight",
        "encoder.down.3.downsample.conv.weight",
        "decoder.up.0.upsample.conv.weight",
        "decoder.up.3.block.0.nin_shortcut.weight",
    ]:
        assert absent not in state
    assert not any(".attn." in key for key in state)
    assert model.downsample_factor == 8


def test_attention_levels_follow_attn_resolutions():
    # Resolution 32 with ch_mult [1, 2, 2]: levels at 32, 16, 8. Attention at 16 means level 1,
    # one per residual block (encoder: 1, decoder: 2).
    model = KLAutoencoder(**{**TINY, "attn_resolutions": [16]})
    keys = {key.rsplit(".", 2)[0] for key in model.state_dict() if ".attn." in key}
    assert keys == {"encoder.down.1.attn.0", "decoder.up.1.attn.0", "decoder.up.1.attn.1"}
    assert model.encode(torch.randn(1, 3, 32, 32)).mean.shape == (1, 4, 8, 8)


def test_tiny_shapes_and_properties():
    torch.manual_seed(0)
    model = KLAutoencoder(**TINY)
    x = torch.randn(2, 3, 32, 32)
    posterior = model.encode(x)
    assert posterior.mean.shape == (2, 4, 8, 8)
    assert model.decode(posterior.mode()).shape == (2, 3, 32, 32)
    # Any size divisible by f works, not only the nominal resolution.
    assert model.encode(torch.randn(1, 3, 16, 24)).mean.shape == (1, 4, 4, 6)
    assert model.downsample_factor == 4
    assert model.last_layer is model.decoder.conv_out.weight


def test_forward_mode_and_generator():
    torch.manual_seed(0)
    model = KLAutoencoder(**TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        mode_reconstruction, posterior = model(x, sample_posterior=False)
        torch.testing.assert_close(mode_reconstruction, model.decode(posterior.mean))
        a, _ = model(x, generator=torch.Generator().manual_seed(7))
        b, _ = model(x, generator=torch.Generator().manual_seed(7))
        expected = model.decode(posterior.sample(torch.Generator().manual_seed(7)))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, expected)
    assert (a - mode_reconstruction).abs().max() > 1e-3  # the sampled latent really differs


def test_bad_inputs_are_rejected():
    model = KLAutoencoder(**TINY)
    with pytest.raises(ValueError, match="30x32 is not divisible by the autoencoder factor 4"):
        model.encode(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="expected 3 image channels, got 1"):
        model.encode(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model.encode(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="latents of shape"):
        model.decode(torch.randn(1, 3, 8, 8))


def test_channels_must_divide_into_groupnorm_groups():
    with pytest.raises(ValueError, match="multiple of 32"):
        KLAutoencoder(**{**TINY, "ch": 48})
    with pytest.raises(ValueError, match="multiple of 32"):
        KLAutoencoder(**{**TINY, "ch": 32, "ch_mult": [1, 1.5]})
    with pytest.raises(ValueError, match="embed_dim"):
        KLAutoencoder(**{**TINY, "embed_dim": 0})


def test_constructor_is_keyword_only_and_from_config_matches():
    with pytest.raises(TypeError, match="positional argument"):
        KLAutoencoder(4, 4)  # the constructor takes keywords only
    config = AutoencoderConfig(**TINY, kl_weight=0.5, learning_rate=1.0)
    torch.manual_seed(0)
    a = KLAutoencoder.from_config(config)
    torch.manual_seed(0)
    b = KLAutoencoder(**TINY)
    for (key_a, value_a), (key_b, value_b) in zip(
        a.state_dict().items(), b.state_dict().items(), strict=True
    ):
        assert key_a == key_b
        torch.testing.assert_close(value_a, value_b, rtol=0, atol=0)


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    block = AttnBlock(32)
    x = torch.randn(2, 32, 3, 5)
    h = block.norm(x)
    q = block.q(h).flatten(2)  # [B, C, HW]
    k = block.k(h).flatten(2)
    v = block.v(h).flatten(2)
    weights = torch.softmax(q.transpose(1, 2) @ k / 32**0.5, dim=-1)  # [B, HW(query), HW(key)]
    attended = (v @ weights.transpose(1, 2)).view(2, 32, 3, 5)
    expected = x + block.proj_out(attended)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def _tap_kernel(channels: int, row: int, col: int) -> torch.Tensor:
    """A 3x3 conv kernel that copies each channel's pixel at offset (row, col) of the window."""
    kernel = torch.zeros(channels, channels, 3, 3)
    for c in range(channels):
        kernel[c, c, row, col] = 1.0
    return kernel


def test_downsample_pads_right_and_bottom_only():
    block = Downsample(2)
    x = torch.arange(2 * 6 * 6, dtype=torch.float32).view(1, 2, 6, 6) + 1.0
    with torch.no_grad():
        block.conv.bias.zero_()
        block.conv.weight.copy_(_tap_kernel(2, 0, 0))
        # The window's top-left tap is pixel (2i, 2j): no padding on top or left.
        torch.testing.assert_close(block(x), x[:, :, ::2, ::2])
        block.conv.weight.copy_(_tap_kernel(2, 2, 2))
        # The bottom-right tap is pixel (2i + 2, 2j + 2), zero padding past the last row/column.
        out = block(x)
    assert out.shape == (1, 2, 3, 3)
    torch.testing.assert_close(out[:, :, :2, :2], x[:, :, 2::2, 2::2])
    assert out[:, :, 2, :].abs().sum() == 0 and out[:, :, :, 2].abs().sum() == 0


def test_upsample_is_nearest_then_conv():
    block = Upsample(2)
    x = torch.randn(1, 2, 3, 4)
    with torch.no_grad():
        block.conv.bias.zero_()
        block.conv.weight.copy_(_tap_kernel(2, 1, 1))  # identity
        out = block(x)
    expected = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(out, expected)


def test_resnet_block_shortcut_only_when_channels_change():
    same, wider = ResnetBlock(32, 32), ResnetBlock(32, 64)
    assert not hasattr(same, "nin_shortcut")
    assert isinstance(wider.nin_shortcut, nn.Conv2d) and wider.nin_shortcut.kernel_size == (1, 1)
    # With conv2 zeroed, the residual branch vanishes and the block is its skip path.
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        for block in (same, wider):
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
        torch.testing.assert_close(same(x), x)
        torch.testing.assert_close(wider(x), wider.nin_shortcut(x))
