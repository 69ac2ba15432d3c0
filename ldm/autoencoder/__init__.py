"""The KL autoencoder of latent diffusion (SD weight layout), its loss, and its Lightning module."""

from ldm.autoencoder.distributions import DiagonalGaussianDistribution
from ldm.autoencoder.losses import ReconstructionKLLoss
from ldm.autoencoder.model import Decoder, Encoder, KLAutoencoder
from ldm.autoencoder.module import AutoencoderModule

__all__ = [
    "AutoencoderModule",
    "Decoder",
    "DiagonalGaussianDistribution",
    "Encoder",
    "KLAutoencoder",
    "ReconstructionKLLoss",
]
