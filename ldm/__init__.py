"""ldm: train latent diffusion text-to-image models and sample from them."""

__version__ = "0.1.0"
