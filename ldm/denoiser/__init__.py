"""The latent U-Net denoiser with cross-attention (Stable Diffusion 1.x/2.x layout)."""

from ldm.denoiser.unet import UNetModel

__all__ = ["UNetModel"]
