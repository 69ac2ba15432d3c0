"""What caching latents can save: the frozen encoder's FLOPs against the U-Net's training step, per image.

    python scripts/encoder_share.py --resolutions 64 256 512                 # SD 2 base networks
    python scripts/encoder_share.py --resolutions 32 64 -- experiment=shapes  # the shapes preset

Composes the training config (Hydra overrides after ``--``), builds its autoencoder and U-Net with
fake tensors (shapes without data: no memory, no arithmetic) and counts with torch's FLOP formulas
(``ldm.throughput.FlopCount``), per image: the encoder's forward pass on an R x R image, and the
U-Net's forward and backward pass on the latents, attending to a context of the conditioner's
length and width; and the frozen text encoder's forward pass on one caption. Training from cached
latents skips the first; if a step's time follows its FLOPs, caching speeds a step up by at most
(encoder + text + U-Net step) / (text + U-Net step), and caching the text embeddings too
(``--text``) by at most (encoder + text + U-Net step) / U-Net step. Left out, being the same either
way: the loss and the optimizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ldm.autoencoder.model import KLAutoencoder
from ldm.conditioning.text import OpenCLIPTextEncoder
from ldm.config import TrainConfig, compose_config
from ldm.denoiser.unet import UNetModel
from ldm.throughput import FlopCount


def encoder_flops(autoencoder: KLAutoencoder, resolution: int) -> int:
    """FLOPs of encoding one R x R image into its posterior's moments."""
    image = torch.zeros(1, 3, resolution, resolution)
    with FlopCount() as counter:
        autoencoder.encode(image)
    return counter.total


def unet_step_flops(unet: UNetModel, latent_shape: tuple[int, ...], context_shape: tuple[int, int]) -> int:
    """FLOPs of the U-Net's forward and backward pass on one latent."""
    x = torch.zeros(1, *latent_shape)
    t = torch.zeros(1, dtype=torch.long)
    context = torch.zeros(1, *context_shape)
    with FlopCount() as counter:
        unet(x, t, context).sum().backward()
    return counter.total


def text_flops(text_encoder: OpenCLIPTextEncoder) -> int:
    """FLOPs of the text encoder's forward pass on one caption (every caption is context_length tokens)."""
    with FlopCount() as counter:
        text_encoder(["a caption"])
    return counter.total


def encoder_share(config: TrainConfig, resolutions: list[int]) -> list[dict]:
    """One row per resolution: GFLOP of the encoder, the text encoder and the U-Net step, and the
    speed-up ceilings of caching latents, and latents and text embeddings."""
    with FakeTensorMode():  # tensors with shapes and no data: nothing is allocated or computed
        return _encoder_share(config, resolutions)


def _encoder_share(config: TrainConfig, resolutions: list[int]) -> list[dict]:
    autoencoder = KLAutoencoder.from_config(config.autoencoder)
    unet = UNetModel.from_config(config.denoiser)
    autoencoder.requires_grad_(False)
    text = text_flops(OpenCLIPTextEncoder(dataclasses.replace(config.conditioner, pretrained=None)))
    factor = autoencoder.downsample_factor
    context = (config.conditioner.context_length, config.denoiser.context_dim)
    rows = []
    for resolution in resolutions:
        if resolution % factor:
            raise ValueError(
                f"resolution {resolution} is not a multiple of the autoencoder's factor {factor}"
            )
        latent = (config.autoencoder.z_channels, resolution // factor, resolution // factor)
        encoder = encoder_flops(autoencoder, resolution)
        step = unet_step_flops(unet, latent, context)
        rows.append(
            {
                "resolution": resolution,
                "latent": list(latent),
                "encoder_gflop": round(encoder / 1e9, 3),
                "text_gflop": round(text / 1e9, 3),
                "unet_step_gflop": round(step / 1e9, 3),
                "ceiling": round((encoder + text + step) / (text + step), 3),
                "ceiling_with_text": round((encoder + text + step) / step, 3),
            }
        )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolutions", nargs="+", type=int, default=[64, 256, 512])
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    config = compose_config(args.overrides)
    rows = encoder_share(config, args.resolutions)
    lines = [
        "| resolution | latent | encoder GFLOP | text GFLOP | U-Net step GFLOP | ceiling | with text |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        latent = "x".join(str(n) for n in r["latent"])
        lines.append(
            f"| {r['resolution']} | {latent} | {r['encoder_gflop']} | {r['text_gflop']} | {r['unet_step_gflop']} "
            f"| {r['ceiling']:.2f}x | {r['ceiling_with_text']:.2f}x |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps({"overrides": args.overrides, "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
