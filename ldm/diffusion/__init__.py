"""Diffusion on latents: noise schedules, parametrisations, the training objective."""
