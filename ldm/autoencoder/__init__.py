"""The KL autoencoder of latent diffusion (SD weight layout) and its losses (plain PyTorch)."""

from ldm.autoencoder.discriminator import NLayerDiscriminator
from ldm.autoencoder.distributions import DiagonalGaussianDistribution
from ldm.autoencoder.latent_stats import compute_latent_stats, stored_scale_factor
from ldm.autoencoder.losses import AutoencoderLoss, ReconstructionKLLoss
from ldm.autoencoder.model import Decoder, Encoder, KLAutoencoder
from ldm.autoencoder.perceptual import LPIPS, load_lpips
from ldm.weights.sd import load_sd_vae, save_sd_vae

__all__ = [
    "LPIPS",
    "AutoencoderLoss",
    "Decoder",
    "DiagonalGaussianDistribution",
    "Encoder",
    "KLAutoencoder",
    "NLayerDiscriminator",
    "ReconstructionKLLoss",
    "compute_latent_stats",
    "load_lpips",
    "load_sd_vae",
    "save_sd_vae",
    "stored_scale_factor",
]
