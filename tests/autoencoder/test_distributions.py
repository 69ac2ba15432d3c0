"""Tests for ldm/autoencoder/distributions.py."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ldm.autoencoder.distributions import DiagonalGaussianDistribution


def _parameters(mean: float, std: float, shape: tuple[int, ...]) -> torch.Tensor:
    """Stack a constant mean and log-variance on the channel axis: [B, 2C, H, W]."""
    logvar = 2.0 * math.log(std)
    return torch.cat([torch.full(shape, mean), torch.full(shape, logvar)], dim=1)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    parameters = torch.randn(3, 8, 5, 6) * 2.0  # logvar spans roughly [-6, 6], inside the clamp
    posterior = DiagonalGaussianDistribution(parameters)
    expected = kl_divergence(Normal(posterior.mean, posterior.std), Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    kl = posterior.kl()
    assert kl.shape == (3,)
    torch.testing.assert_close(kl, expected, atol=1e-5, rtol=1e-5)


def test_kl_of_standard_normal_is_zero_and_closed_form():
    # mean 0, std 1 -> KL 0; mean 1, std 1 -> 0.5 per element; 4 channels x 2 x 3 = 24 elements.
    zero = DiagonalGaussianDistribution(_parameters(0.0, 1.0, (2, 4, 2, 3))).kl()
    torch.testing.assert_close(zero, torch.zeros(2))
    shifted = DiagonalGaussianDistribution(_parameters(1.0, 1.0, (2, 4, 2, 3))).kl()
    torch.testing.assert_close(shifted, torch.full((2,), 12.0))


def test_nll_matches_torch_log_prob():
    torch.manual_seed(1)
    parameters = torch.randn(2, 6, 4, 4)
    posterior = DiagonalGaussianDistribution(parameters)
    sample = torch.randn(2, 3, 4, 4)
    expected = -Normal(posterior.mean, posterior.std).log_prob(sample).sum(dim=(1, 2, 3))
    torch.testing.assert_close(posterior.nll(sample), expected, atol=1e-4, rtol=1e-5)


def test_logvar_is_clamped_and_std_var_follow():
    mean = torch.zeros(1, 1, 1, 2)
    logvar = torch.tensor([[[[100.0, -100.0]]]])
    posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    assert posterior.logvar.flatten().tolist() == [20.0, -30.0]
    torch.testing.assert_close(posterior.var, torch.exp(torch.tensor([[[[20.0, -30.0]]]])))
    torch.testing.assert_close(posterior.std, torch.exp(torch.tensor([[[[10.0, -15.0]]]])))


def test_sample_moments():
    # 40,000 i.i.d. draws of N(0.7, 0.5^2). Standard error of the sample mean is
    # 0.5 / sqrt(4e4) = 0.0025 and of the sample std about 0.5 / sqrt(2 * 4e4) = 0.0018;
    # we allow 4 standard errors (0.01 and 0.007), which a correct sampler fails with
    # probability below 1e-4 (and the generator fixes the draw anyway).
    posterior = DiagonalGaussianDistribution(_parameters(0.7, 0.5, (4, 1, 100, 100)))
    samples = posterior.sample(generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 100, 100)
    assert abs(samples.mean().item() - 0.7) < 0.01
    assert abs(samples.std().item() - 0.5) < 0.007


def test_generator_makes_sampling_reproducible():
    torch.manual_seed(2)
    posterior = DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4))
    a = posterior.sample(generator=torch.Generator().manual_seed(123))
    b = posterior.sample(generator=torch.Generator().manual_seed(123))
    c = posterior.sample(generator=torch.Generator().manual_seed(124))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 0.1


def test_mode_and_deterministic():
    torch.manual_seed(3)
    parameters = torch.randn(2, 8, 3, 3)
    posterior = DiagonalGaussianDistribution(parameters, deterministic=True)
    torch.testing.assert_close(posterior.mode(), parameters[:, :4])
    torch.testing.assert_close(posterior.sample(), parameters[:, :4])
    torch.testing.assert_close(posterior.kl(), torch.zeros(2))
    torch.testing.assert_close(posterior.nll(parameters[:, :4]), torch.zeros(2))


def test_odd_channel_count_is_rejected():
    with pytest.raises(ValueError, match="even channel count"):
        DiagonalGaussianDistribution(torch.zeros(1, 3, 2, 2))
