"""Weights in and out (plain PyTorch): ``io`` reads, writes and checks weight files; ``checkpoint``
reads this project's checkpoints; ``sd`` converts Stable Diffusion's single-file and VAE layouts."""
