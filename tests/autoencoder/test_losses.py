"""Tests for ldm/autoencoder/losses.py."""

import math

import pytest
import torch

from ldm.autoencoder.distributions import DiagonalGaussianDistribution
from ldm.autoencoder.losses import ReconstructionKLLoss, as_delivered


def _example() -> tuple[torch.Tensor, torch.Tensor, DiagonalGaussianDistribution]:
    """Two 1x2x2 images with |x - x_hat| summing to 10 and 2 (12 over 8 elements, mean 1.5), and
    a posterior whose latents (1x2x1 per image) have mean (1, 2) and std 1, so KL per image is
    0.5 * 1^2 + 0.5 * 2^2 = 2.5."""
    inputs = torch.zeros(2, 1, 2, 2)
    reconstructions = torch.tensor([[[[1.0, -2.0], [3.0, -4.0]]], [[[0.5, 0.5], [-0.5, 0.5]]]])
    mean = torch.tensor([1.0, 2.0]).view(1, 1, 2, 1).expand(2, 1, 2, 1)
    posterior = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros(2, 1, 2, 1)], dim=1))
    return inputs, reconstructions, posterior


def test_loss_matches_hand_computation():
    inputs, reconstructions, posterior = _example()
    criterion = ReconstructionKLLoss(kl_weight=0.1, logvar_init=0.5)
    loss, log = criterion(inputs, reconstructions, posterior)
    # nll = sum(|x - x_hat|) * exp(-0.5) + 8 * 0.5 = 12 * 0.6065306597 + 4 = 11.2783679
    # nll_loss = 11.2783679 / 2 = 5.6391840; kl_loss = (2.5 + 2.5) / 2 = 2.5
    # loss = 5.6391840 + 0.1 * 2.5 = 5.8891840
    expected_nll = (12.0 * math.exp(-0.5) + 8 * 0.5) / 2
    assert expected_nll == pytest.approx(5.6391840, abs=1e-6)
    assert loss.item() == pytest.approx(5.8891840, abs=1e-5)
    assert log["loss"].item() == pytest.approx(5.8891840, abs=1e-5)
    assert log["nll_loss"].item() == pytest.approx(5.6391840, abs=1e-5)
    assert log["kl_loss"].item() == pytest.approx(2.5, abs=1e-6)
    assert log["rec_loss"].item() == pytest.approx(1.5, abs=1e-6)
    assert log["logvar"].item() == pytest.approx(0.5)
    assert all(not value.requires_grad for value in log.values())


def test_logvar_gradient_and_optimum():
    inputs, reconstructions, posterior = _example()
    criterion = ReconstructionKLLoss(kl_weight=0.0)
    loss, _ = criterion(inputs, reconstructions, posterior)
    loss.backward()
    # d loss / d logvar = (-sum|x - x_hat| * exp(-logvar) + N) / B = (-12 + 8) / 2 at logvar 0
    assert criterion.logvar.grad.item() == pytest.approx(-2.0)

    # The minimiser of sum(r * exp(-s) + s) is s* = log(mean r) = log(1.5): the gradient vanishes.
    optimum = ReconstructionKLLoss(kl_weight=0.0, logvar_init=math.log(1.5))
    loss, _ = optimum(inputs, reconstructions, posterior)
    loss.backward()
    assert optimum.logvar.grad.item() == pytest.approx(0.0, abs=1e-6)


def test_clipped_loss_frees_only_overshoot_past_a_saturated_target():
    # Targets at -1, 1 and 0.5; outputs past each on either side.
    inputs = torch.tensor([-1.0, -1.0, 1.0, 1.0, 0.5, 0.5]).view(1, 1, 2, 3)
    outputs = torch.tensor([-1.5, -0.5, 1.5, 0.5, 1.5, -0.5]).view(1, 1, 2, 3).requires_grad_()
    delivered = as_delivered(inputs, outputs)
    # Past -1 downwards and past 1 upwards the clip makes the output exact: no error there. Short of
    # a saturated target, and past an unsaturated one (0.5 -> 1.5), the error stays.
    assert delivered.flatten().tolist() == [-1.0, -0.5, 1.0, 0.5, 1.5, -0.5]
    delivered.sum().backward()
    assert outputs.grad.flatten().tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0]

    posterior = DiagonalGaussianDistribution(torch.zeros(1, 2, 1, 1))
    for reconstruction in ("l1", "l2"):
        _, plain = ReconstructionKLLoss(0.0, reconstruction=reconstruction)(inputs, outputs, posterior)
        _, clipped = ReconstructionKLLoss(0.0, reconstruction=reconstruction, clipped=True)(inputs, outputs, posterior)
        # errors 0.5, 0.5, 0.5, 0.5, 1, 1: plain mean 4 / 6 (l1), 3 / 6 (l2); clipped drops two 0.5s
        assert plain["rec_loss"].item() == pytest.approx(4 / 6 if reconstruction == "l1" else 3 / 6)
        assert clipped["rec_loss"].item() == pytest.approx(3 / 6 if reconstruction == "l1" else 2.5 / 6)


def test_kl_weight_scales_only_the_kl_term():
    inputs, reconstructions, posterior = _example()
    loss_0, _ = ReconstructionKLLoss(kl_weight=0.0)(inputs, reconstructions, posterior)
    loss_1, _ = ReconstructionKLLoss(kl_weight=1.0)(inputs, reconstructions, posterior)
    assert (loss_1 - loss_0).item() == pytest.approx(2.5, abs=1e-5)


def test_bad_arguments_are_rejected():
    inputs, reconstructions, posterior = _example()
    with pytest.raises(ValueError, match="kl_weight"):
        ReconstructionKLLoss(kl_weight=-1.0)
    with pytest.raises(ValueError, match="same shape"):
        ReconstructionKLLoss(kl_weight=1.0)(inputs, reconstructions[:, :, :1], posterior)
