"""The stage-1 training loss: L1 reconstruction under a learned scale, plus a weighted KL term.

This is LDM's ``LPIPSWithDiscriminator`` objective without its perceptual and adversarial terms
(they come later), normalised the same way, so LDM's ``kl_weight`` values carry over: sums over
all elements divided by the batch size, not means.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ldm.autoencoder.distributions import DiagonalGaussianDistribution

RECONSTRUCTION_LOSSES = ("l1", "l2")


class ReconstructionKLLoss(nn.Module):
    """loss = sum(d(x, x_hat) / exp(logvar) + logvar) / B + kl_weight * sum(KL(q(z|x) || N(0, I))) / B.

    d is the elementwise L1 distance |x - x_hat| (LDM's default) or the squared error (L2).

    ``logvar`` is a learned scalar: the log of a Laplace-like scale of the reconstruction error,
    which lets the model trade the reconstruction term against the KL term by itself.
    """

    def __init__(self, kl_weight: float, logvar_init: float = 0.0, reconstruction: str = "l1") -> None:
        super().__init__()
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        if reconstruction not in RECONSTRUCTION_LOSSES:
            raise ValueError(
                f"unknown reconstruction loss '{reconstruction}'; available: {', '.join(RECONSTRUCTION_LOSSES)}"
            )
        self.reconstruction = reconstruction
        self.kl_weight = kl_weight
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)))

    def forward(
        self, inputs: Tensor, reconstructions: Tensor, posterior: DiagonalGaussianDistribution
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the scalar loss and a dict of detached terms (loss, rec_loss, nll_loss, kl_loss, logvar)."""
        if inputs.shape != reconstructions.shape:
            raise ValueError(
                f"inputs and reconstructions must have the same shape, got {tuple(inputs.shape)} "
                f"and {tuple(reconstructions.shape)}"
            )
        batch_size = inputs.shape[0]
        diff = inputs - reconstructions
        rec = diff.abs() if self.reconstruction == "l1" else diff.square()  # [B, C, H, W]
        nll = rec / torch.exp(self.logvar) + self.logvar
        nll_loss = nll.sum() / batch_size
        kl_loss = posterior.kl().sum() / batch_size
        loss = nll_loss + self.kl_weight * kl_loss
        log = {
            "loss": loss.detach(),
            "rec_loss": rec.detach().mean(),
            "nll_loss": nll_loss.detach(),
            "kl_loss": kl_loss.detach(),
            "logvar": self.logvar.detach(),
        }
        return loss, log
