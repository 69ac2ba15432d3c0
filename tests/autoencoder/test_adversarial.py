"""Tests for the adversarial part of ldm/autoencoder/losses.py (AutoencoderLoss, adaptive weight)."""

import pytest
import torch
from torch import nn

from ldm.autoencoder.discriminator import NLayerDiscriminator
from ldm.autoencoder.distributions import DiagonalGaussianDistribution
from ldm.autoencoder.losses import AutoencoderLoss, adaptive_weight, hinge_d_loss, vanilla_d_loss


def test_d_losses_closed_form():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # hinge: relu(1 - real) = (0, 0.5, 2) -> mean 5/6; relu(1 + fake) = (0, 1, 2) -> mean 1.
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(0.5 * (5 / 6 + 1)))
    softplus = torch.nn.functional.softplus
    torch.testing.assert_close(
        vanilla_d_loss(real, fake), 0.5 * (softplus(-real).mean() + softplus(fake).mean())
    )


def test_adaptive_weight_is_ratio_of_gradient_norms_clamped():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    nll = (3.0 * w).sum()  # grad (3, 3): norm 3 sqrt 2
    g = (w**2).sum()  # grad (2, 4): norm sqrt 20
    expected = 3 * 2**0.5 / (20**0.5 + 1e-4) * 0.5
    torch.testing.assert_close(adaptive_weight(nll, g, w, 0.5), torch.tensor(expected))
    tiny = (1e-9 * w).sum()  # g's gradient ~0: the ratio is clamped at 1e4
    torch.testing.assert_close(adaptive_weight((1e3 * w).sum(), tiny, w, 1.0), torch.tensor(1e4))


def test_generator_loss_adds_weighted_adversarial_term_only_from_disc_start():
    torch.manual_seed(0)
    disc = NLayerDiscriminator(3, 8, 2)
    loss = AutoencoderLoss(1e-6, reconstruction="l1", discriminator=disc, disc_start=10, disc_weight=0.5)
    last = nn.Parameter(torch.randn(3, 3, 3, 3))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    rec = torch.nn.functional.conv2d(x, last, padding=1)
    posterior = DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4))
    before, log_before = loss.generator_loss(x, rec, posterior, last, global_step=9)
    assert "g_loss" not in log_before and not loss.discriminator_active(9) and loss.discriminator_active(10)
    after, log = loss.generator_loss(x, rec, posterior, last, global_step=10)
    g_loss = -disc(rec).mean()
    terms = loss.terms(x, rec, posterior)
    expected_w = adaptive_weight(terms["nll_loss"], g_loss, last, 0.5)
    torch.testing.assert_close(log["d_weight"], expected_w)
    torch.testing.assert_close(after, before + expected_w * g_loss, rtol=1e-5, atol=1e-5)
    d_loss, d_log = loss.discriminator_step_loss(x, rec)
    torch.testing.assert_close(d_loss, hinge_d_loss(disc(x), disc(rec)))
    disc.zero_grad(set_to_none=True)
    last.grad = None
    d_loss.backward()
    # The discriminator step trains the discriminator alone: the reconstructions enter it detached.
    assert last.grad is None
    assert disc.main[0].weight.grad.abs().sum() > 0


def test_bad_adversarial_arguments():
    with pytest.raises(ValueError, match="discriminator loss"):
        AutoencoderLoss(1e-6, disc_loss="wasserstein")
    with pytest.raises(ValueError, match="disc_weight"):
        AutoencoderLoss(1e-6, disc_weight=-1.0)
    with pytest.raises(ValueError, match="no discriminator"):
        AutoencoderLoss(1e-6).discriminator_step_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
