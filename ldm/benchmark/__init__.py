"""Measurements behind ``python -m ldm.bench``: plain PyTorch, no Lightning, no Hydra.

``timing`` (warm-up, alternating rounds, medians), ``peak`` (the device's matmul FLOP rate),
``memory`` (process and device peaks), ``settings`` (the bench section resolved for this machine),
``networks`` (the U-Net, autoencoder and objective to time), ``training`` (a U-Net training step,
its FLOPs and MFU), ``sampling`` (guided sampler runs), ``autoencoder`` (encode and decode),
``data`` (batches of a loader), ``diffusers_compare`` (the same networks in diffusers, side by
side), ``report`` (numbers with units, metadata, the table) and ``run`` (all of them, in order).
"""
