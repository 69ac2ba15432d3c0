"""Per-timestep weights of the denoising loss: uniform, or min-SNR-gamma (Hang et al. 2023).

min-SNR-gamma weights the error measured on x0 by min(SNR_t, gamma), so that the nearly clean,
easy timesteps do not dominate. A network regressing another target sees that error rescaled:
with z_t = sqrt(a) x0 + sqrt(1 - a) eps and SNR = a / (1 - a),

    ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2           (x0 = (z_t - sqrt(1 - a) eps) / sqrt(a))
    ||v - v_hat||^2     = (SNR + 1) ||x0 - x0_hat||^2     (x0 = sqrt(a) z_t - sqrt(1 - a) v)

so the weight on the target's MSE is min(SNR, gamma) / SNR for eps (= min(1, gamma / SNR)),
min(SNR, gamma) / (SNR + 1) for v, and min(SNR, gamma) for x0 (Hang et al. 2023, Sec. 3.4).
"""

from __future__ import annotations

import torch

from ldm.diffusion.parametrization import check_parameterization

LOSS_WEIGHTINGS = ("uniform", "min_snr")


def check_loss_weighting(weighting: str, gamma: float = 5.0) -> None:
    """Raise a clear error for an unknown weighting name or a non-positive gamma."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss_weighting '{weighting}'; available: {', '.join(LOSS_WEIGHTINGS)}")
    if weighting == "min_snr" and not gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {gamma}")


def min_snr_weight(snr: torch.Tensor, parameterization: str, gamma: float = 5.0) -> torch.Tensor:
    """The min-SNR-gamma weight on the MSE of `parameterization`'s target, per SNR value.

    At SNR = 0 (a zero-terminal-SNR last step) the eps weight is its limit, 1.
    """
    check_parameterization(parameterization)
    clipped = snr.clamp(max=gamma)
    if parameterization == "eps":
        return (gamma / snr).clamp(max=1.0)  # gamma / 0 = inf -> 1
    if parameterization == "v":
        return clipped / (snr + 1.0)
    return clipped


def loss_weights(
    snr: torch.Tensor, parameterization: str, weighting: str = "uniform", gamma: float = 5.0
) -> torch.Tensor:
    """Weights shaped like `snr` ([B]) that multiply each sample's MSE."""
    check_loss_weighting(weighting, gamma)
    if weighting == "uniform":
        return torch.ones_like(snr)
    return min_snr_weight(snr, parameterization, gamma)
