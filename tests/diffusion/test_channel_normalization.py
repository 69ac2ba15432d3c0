"""Tests for ldm/diffusion/channel_normalization.py: per-channel latent statistics, and folding the
normalization into the autoencoder's weights (checked against the unfolded networks)."""

import pytest
import torch

from ldm.autoencoder.model import KLAutoencoder
from ldm.config import AutoencoderConfig
from ldm.diffusion.channel_normalization import channel_stats, denormalize, fold_into_autoencoder, normalize


def test_channel_stats_recover_each_channels_mean_and_std():
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([1.7, -0.5, 0.8, 3.0]), torch.tensor([1.7, 2.2, 0.4, 6.6])
    batches = [mean.view(1, 4, 1, 1) + std.view(1, 4, 1, 1) * torch.randn(64, 4, 8, 8, generator=g) for _ in range(4)]
    got_mean, got_std = channel_stats(iter(batches), max_batches=3)
    n = 3 * 64 * 8 * 8  # standard errors: std / sqrt(n) for the mean, std / sqrt(2n) for the std
    assert torch.all((got_mean - mean).abs() < 5 * std / n**0.5)
    assert torch.all((got_std - std).abs() < 5 * std / (2 * n) ** 0.5)
    flat = torch.cat(batches[:3]).transpose(0, 1).reshape(4, -1)
    assert torch.allclose(got_std, flat.std(dim=1))  # only 3 batches were read


def test_channel_stats_refuse_degenerate_latents():
    z = torch.randn(2, 4, 4, 4)
    z[:, 2] = 1.0
    with pytest.raises(ValueError, match="degenerate"):
        channel_stats([z], max_batches=1)
    with pytest.raises(ValueError, match="max_batches"):
        channel_stats([z], max_batches=0)


def test_normalize_and_denormalize_are_inverse():
    z = torch.randn(3, 4, 5, 5)
    mean, std = torch.randn(4), torch.rand(4) + 0.1
    normalized = normalize(z, mean, std)
    assert torch.allclose(normalized[:, 1], (z[:, 1] - mean[1]) / std[1])
    assert torch.allclose(denormalize(normalized, mean, std), z, atol=1e-6)


def tiny_autoencoder(seed: int) -> KLAutoencoder:
    torch.manual_seed(seed)
    model = KLAutoencoder.from_config(AutoencoderConfig(resolution=16, ch=16, ch_mult=[1, 2], num_res_blocks=1,
                                                        norm_groups=8, attn_resolutions=[]))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the output layers start at zero otherwise
    return model.eval()


def test_folded_autoencoder_encodes_normalized_latents_and_decodes_them():
    model = tiny_autoencoder(0)
    mean, std = torch.tensor([0.9, -1.2, 0.3, 2.5]), torch.tensor([0.4, 1.7, 3.0, 0.8])
    folded = tiny_autoencoder(1)
    folded.load_state_dict(fold_into_autoencoder(model.state_dict(), mean, std))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        posterior, folded_posterior = model.encode(x), folded.encode(x)
        # N(mu, sigma^2) -> N((mu - mean) / std, (sigma / std)^2)
        assert torch.allclose(folded_posterior.mean, normalize(posterior.mean, mean, std), atol=1e-5)
        assert torch.allclose(folded_posterior.std, posterior.std / std.view(1, -1, 1, 1), rtol=1e-5)
        z = torch.randn(2, 4, 8, 8)
        assert torch.allclose(folded.decode(z), model.decode(denormalize(z, mean, std)), atol=1e-5)
    untouched = model.state_dict()["encoder.conv_in.weight"]
    assert torch.equal(folded.state_dict()["encoder.conv_in.weight"], untouched)


def test_fold_checks_the_channel_count():
    state = tiny_autoencoder(0).state_dict()
    with pytest.raises(ValueError, match="quant_conv has 8 outputs"):
        fold_into_autoencoder(state, torch.zeros(3), torch.ones(3))
