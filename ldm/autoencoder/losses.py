"""The stage-1 training losses of LDM/SD (``LPIPSWithDiscriminator``): reconstruction (L1 or L2,
plus LPIPS) under a learned scale, a weighted KL term, and a PatchGAN adversarial term whose weight
adapts to the ratio of gradient norms at the decoder's last layer (Esser et al. 2021, Eq. 7).

Normalised as LDM, so its ``kl_weight`` values carry over: sums over all elements divided by the
batch size, not means.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.autoencoder.discriminator import NLayerDiscriminator
from ldm.autoencoder.distributions import DiagonalGaussianDistribution
from ldm.autoencoder.perceptual import LPIPS

RECONSTRUCTION_LOSSES = ("l1", "l2")
DISC_LOSSES = ("hinge", "vanilla")
ADAPTIVE_WEIGHT_MAX = 1e4
"""Upper clamp of the adaptive weight before it is multiplied by disc_weight (as LDM)."""


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """0.5 * (mean(softplus(-D(x))) + mean(softplus(D(x_hat)))): the non-saturating GAN loss."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def as_delivered(inputs: Tensor, reconstructions: Tensor) -> Tensor:
    """`reconstructions` where it matters once clipped to [-1, 1], as every decoded image is: past a target
    at -1 or 1, on the far side, the clip makes the output exact, so there it is replaced by the target
    (no error, no gradient). Everywhere else, including an overshoot past a target inside the range, the
    reconstruction is kept as it is, so that a wrong output is always pulled back."""
    beyond = ((inputs <= -1) & (reconstructions < -1)) | ((inputs >= 1) & (reconstructions > 1))
    return torch.where(beyond, inputs, reconstructions)


def adaptive_weight(nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, disc_weight: float) -> Tensor:
    """disc_weight * clamp(|grad nll| / (|grad g| + 1e-4), 0, 1e4), gradients at `last_layer` (detached)."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(weight, 0.0, ADAPTIVE_WEIGHT_MAX).detach() * disc_weight


class ReconstructionKLLoss(nn.Module):
    """loss = sum(d(x, x_hat) / exp(logvar) + logvar) / B + kl_weight * sum(KL(q(z|x) || N(0, I))) / B.

    d is the elementwise L1 distance |x - x_hat| (LDM's default) or the squared error (L2), plus
    ``perceptual_weight * LPIPS(x, x_hat)`` (per image, broadcast over pixels, as LDM) when a
    perceptual network is given.

    ``logvar`` is a learned scalar: the log of a Laplace-like scale of the reconstruction error,
    which lets the model trade the reconstruction term against the KL term by itself.

    With ``clipped=True`` both distances see the reconstruction as delivered (``as_delivered``): the
    decoder may overshoot a pixel at black or at full intensity instead of approaching it with noise
    that survives the clip and the rounding to 8 bits.
    """

    def __init__(
        self,
        kl_weight: float,
        logvar_init: float = 0.0,
        reconstruction: str = "l1",
        perceptual: Optional[LPIPS] = None,
        perceptual_weight: float = 1.0,
        clipped: bool = False,
    ) -> None:
        super().__init__()
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        if perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {perceptual_weight}")
        if reconstruction not in RECONSTRUCTION_LOSSES:
            raise ValueError(
                f"unknown reconstruction loss '{reconstruction}'; available: {', '.join(RECONSTRUCTION_LOSSES)}"
            )
        self.reconstruction = reconstruction
        self.clipped = clipped
        self.kl_weight = kl_weight
        self.perceptual_weight = perceptual_weight
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)))
        self.perceptual_loss = perceptual if perceptual_weight > 0 else None

    def terms(
        self, inputs: Tensor, reconstructions: Tensor, posterior: DiagonalGaussianDistribution
    ) -> dict[str, Tensor]:
        """Differentiable terms: rec (elementwise distance), p_loss (per image or 0), nll_loss, kl_loss."""
        if inputs.shape != reconstructions.shape:
            raise ValueError(
                f"inputs and reconstructions must have the same shape, got {tuple(inputs.shape)} "
                f"and {tuple(reconstructions.shape)}"
            )
        batch_size = inputs.shape[0]
        if self.clipped:
            reconstructions = as_delivered(inputs, reconstructions)
        diff = inputs - reconstructions
        rec = diff.abs() if self.reconstruction == "l1" else diff.square()  # [B, C, H, W]
        p_loss = torch.zeros((), device=inputs.device)
        if self.perceptual_loss is not None:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())  # [B, 1, 1, 1]
            rec = rec + self.perceptual_weight * p_loss
        nll = rec / torch.exp(self.logvar) + self.logvar
        return {
            "rec": rec,
            "p_loss": p_loss,
            "nll_loss": nll.sum() / batch_size,
            "kl_loss": posterior.kl().sum() / batch_size,
        }

    def forward(
        self, inputs: Tensor, reconstructions: Tensor, posterior: DiagonalGaussianDistribution
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the scalar loss and a dict of detached terms (loss, rec_loss, nll_loss, kl_loss, p_loss, logvar)."""
        t = self.terms(inputs, reconstructions, posterior)
        loss = t["nll_loss"] + self.kl_weight * t["kl_loss"]
        return loss, self._log(loss, t)

    def _log(self, loss: Tensor, t: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            "loss": loss.detach(),
            "rec_loss": t["rec"].detach().mean(),
            "nll_loss": t["nll_loss"].detach(),
            "kl_loss": t["kl_loss"].detach(),
            "p_loss": t["p_loss"].detach().mean(),
            "logvar": self.logvar.detach(),
        }


class AutoencoderLoss(ReconstructionKLLoss):
    """LDM's ``LPIPSWithDiscriminator``: ``ReconstructionKLLoss`` plus, from step `disc_start`, an
    adversarial term ``d_weight * disc_factor * -mean(D(x_hat))`` for the autoencoder and a hinge
    or vanilla loss for the PatchGAN ``discriminator``. Before `disc_start` (or without a
    discriminator) nothing of the discriminator runs.
    """

    def __init__(
        self,
        kl_weight: float,
        logvar_init: float = 0.0,
        reconstruction: str = "l1",
        perceptual: Optional[LPIPS] = None,
        perceptual_weight: float = 1.0,
        discriminator: Optional[NLayerDiscriminator] = None,
        disc_start: int = 50_001,
        disc_weight: float = 0.5,
        disc_factor: float = 1.0,
        disc_loss: str = "hinge",
        clipped: bool = False,
    ) -> None:
        super().__init__(kl_weight, logvar_init, reconstruction, perceptual, perceptual_weight, clipped)
        if disc_loss not in DISC_LOSSES:
            raise ValueError(f"unknown discriminator loss '{disc_loss}'; available: {', '.join(DISC_LOSSES)}")
        if disc_weight < 0 or disc_factor < 0 or disc_start < 0:
            raise ValueError(
                f"disc_weight, disc_factor and disc_start must be >= 0, got {disc_weight}, {disc_factor}, {disc_start}"
            )
        self.discriminator = discriminator
        self.disc_start = disc_start
        self.disc_weight = disc_weight
        self.disc_factor = disc_factor
        self.disc_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss

    def discriminator_active(self, global_step: int) -> bool:
        """Whether the adversarial terms apply at this step (LDM's adopt_weight threshold)."""
        return self.discriminator is not None and self.disc_factor > 0 and global_step >= self.disc_start

    def generator_loss(
        self,
        inputs: Tensor,
        reconstructions: Tensor,
        posterior: DiagonalGaussianDistribution,
        last_layer: Tensor,
        global_step: int,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The autoencoder's loss (LDM's optimizer_idx 0) and its detached terms (+ g_loss, d_weight)."""
        t = self.terms(inputs, reconstructions, posterior)
        loss = t["nll_loss"] + self.kl_weight * t["kl_loss"]
        log: dict[str, Tensor] = {}
        if self.discriminator_active(global_step):
            assert self.discriminator is not None
            g_loss = -self.discriminator(reconstructions.contiguous()).mean()
            if torch.is_grad_enabled() and last_layer.requires_grad:
                d_weight = adaptive_weight(t["nll_loss"], g_loss, last_layer, self.disc_weight)
            else:  # no graph to take gradients from (validation)
                d_weight = torch.zeros((), device=inputs.device)
            loss = loss + d_weight * self.disc_factor * g_loss
            log = {"g_loss": g_loss.detach(), "d_weight": d_weight.detach()}
        return loss, {**self._log(loss, t), **log}

    def discriminator_step_loss(
        self, inputs: Tensor, reconstructions: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The discriminator's loss on real `inputs` and detached `reconstructions` (LDM's optimizer_idx 1)."""
        if self.discriminator is None:
            raise ValueError("this loss has no discriminator (disc_weight is 0)")
        logits_real = self.discriminator(inputs.contiguous().detach())
        logits_fake = self.discriminator(reconstructions.contiguous().detach())
        d_loss = self.disc_factor * self.disc_loss(logits_real, logits_fake)
        return d_loss, {
            "d_loss": d_loss.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
