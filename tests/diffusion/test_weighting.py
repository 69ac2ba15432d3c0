import pytest
import torch

from ldm.diffusion.objective import q_sample, training_target
from ldm.diffusion.weighting import loss_weights, min_snr_weight


def _x0_from_prediction(prediction, z_t, a, parameterization):
    """Independent inversion of each parametrisation to an x0 estimate (Salimans & Ho 2022, Sec. 4)."""
    a = a[:, None, None, None]
    if parameterization == "eps":
        return (z_t - (1 - a).sqrt() * prediction) / a.sqrt()
    if parameterization == "v":
        return a.sqrt() * z_t - (1 - a).sqrt() * prediction
    return prediction


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_min_snr_weighted_target_error_is_min_snr_gamma_times_the_x0_error(parameterization):
    # Hang et al. 2023: the loss is min(SNR, gamma) * ||x0 - x0_hat||^2, whatever the network predicts.
    torch.manual_seed(0)
    a = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.003], dtype=torch.float64)
    z0, eps = torch.randn(5, 4, 3, 3, dtype=torch.float64), torch.randn(5, 4, 3, 3, dtype=torch.float64)
    z_t = q_sample(z0, a, eps)
    target = training_target(z0, eps, a, parameterization)
    prediction = target + 0.1 * torch.randn_like(target)
    snr = a / (1 - a)
    gamma = 5.0
    weighted = min_snr_weight(snr, parameterization, gamma) * (prediction - target).pow(2).flatten(1).sum(1)
    x0_error = (_x0_from_prediction(prediction, z_t, a, parameterization) - z0).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(weighted, snr.clamp(max=gamma) * x0_error, rtol=1e-9, atol=1e-12)


def test_min_snr_values_and_the_zero_snr_limit():
    snr = torch.tensor([0.0, 1.0, 5.0, 20.0])
    assert min_snr_weight(snr, "eps", 5.0).tolist() == [1.0, 1.0, 1.0, 0.25]
    assert min_snr_weight(snr, "v", 5.0).tolist() == pytest.approx([0.0, 0.5, 5 / 6, 5 / 21], rel=1e-6)
    assert min_snr_weight(snr, "x0", 5.0).tolist() == [0.0, 1.0, 5.0, 5.0]
    assert loss_weights(snr, "v", "uniform").tolist() == [1.0, 1.0, 1.0, 1.0]


def test_bad_weighting_names_and_gamma():
    with pytest.raises(ValueError, match="unknown loss_weighting 'p2'; available: uniform, min_snr"):
        loss_weights(torch.ones(2), "eps", "p2")
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        loss_weights(torch.ones(2), "eps", "min_snr", gamma=0.0)
    with pytest.raises(ValueError, match="unknown parameterization"):
        min_snr_weight(torch.ones(2), "score")
