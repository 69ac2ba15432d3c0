"""Conditioners: what the U-Net attends to."""
