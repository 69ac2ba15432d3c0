"""What caching latents can save: the frozen encoder's FLOPs against the U-Net's training step, per image.

    python benchmarks/encoder_share.py --resolutions 64 256 512                 # SD 2 base networks
    python benchmarks/encoder_share.py --resolutions 32 64 -- experiment=shapes  # the shapes preset
    python benchmarks/encoder_share.py --resolutions 64 --time --batch-size 8      # and seconds, SD 2 base

Composes the training config (Hydra overrides after ``--``), builds its autoencoder and U-Net with
fake tensors (shapes without data: no memory, no arithmetic) and counts with torch's FLOP formulas
(``ldm.flops.FlopCount``), per image: the encoder's forward pass on an R x R image, and the
U-Net's forward and backward pass on the latents, attending to a context of the conditioner's
length and width; and the frozen text encoder's forward pass on one caption. Training from cached
latents skips the first; if a step's time follows its FLOPs, caching speeds a step up by at most
(encoder + text + U-Net step) / (text + U-Net step), and caching the text embeddings too
(``--text``) by at most (encoder + text + U-Net step) / U-Net step. Left out of the FLOPs, being the
same either way: the loss and the optimizer.

FLOPs are a ceiling only if every network runs at the same FLOP rate. ``--time`` also times the three
on this machine with real tensors (random weights, ``--batch-size`` images): the encoders' forward
passes without gradients, and the U-Net's training step as a run takes it (forward, loss, backward and
the AdamW step, fp32, gradient checkpointing as configured), in ``--repeats`` alternating rounds after
one untimed round, and gives the same two ceilings in seconds: the median over rounds of each round's
ratio, so that a slow moment of the machine falls on all three networks of a round alike.
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
from ldm.benchmark.timing import median, time_rounds
from ldm.conditioning.text import OpenCLIPTextEncoder
from ldm.config import TrainConfig
from ldm.denoiser.unet import UNetModel
from ldm.flops import FlopCount
from ldm.optim import adamw
from ldm.training.config_store import compose_config


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


def time_components(config: TrainConfig, resolution: int, batch_size: int, repeats: int = 7) -> dict:
    """Seconds, on this machine, of the image encoder's and the text encoder's forward passes and the
    U-Net's training step (forward, loss, backward, optimizer) on a batch, in alternating rounds, and
    the two speed-up ceilings in time (medians over rounds of each round's ratio)."""
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch size and repeats must be at least 1, got {batch_size} and {repeats}")
    torch.manual_seed(0)
    autoencoder = KLAutoencoder.from_config(config.autoencoder).requires_grad_(False).eval()
    text_encoder = OpenCLIPTextEncoder(dataclasses.replace(config.conditioner, pretrained=None))
    unet = UNetModel.from_config(config.denoiser).train()
    optimizer = adamw(list(unet.parameters()), lr=config.diffusion.learning_rate)
    factor = autoencoder.downsample_factor
    latent = (config.autoencoder.z_channels, resolution // factor, resolution // factor)
    images = torch.rand(batch_size, 3, resolution, resolution) * 2 - 1
    captions = [f"a red circle number {i} on a blue square" for i in range(batch_size)]
    x = torch.randn(batch_size, *latent)
    t = torch.randint(0, 1000, (batch_size,))
    context = torch.randn(batch_size, config.conditioner.context_length, config.denoiser.context_dim)

    def encode() -> None:
        with torch.no_grad():
            autoencoder.encode(images)

    def encode_text() -> None:
        with torch.no_grad():
            text_encoder(captions)

    def unet_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        unet(x, t, context).square().mean().backward()
        optimizer.step()

    rounds = time_rounds({"encoder": encode, "text": encode_text, "step": unet_step}, rounds=repeats, warmup=1)
    per_round = list(zip(rounds["encoder"], rounds["text"], rounds["step"]))
    return {
        "resolution": resolution,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "rounds": repeats,
        "encoder_s": median(rounds["encoder"]),
        "text_s": median(rounds["text"]),
        "unet_step_s": median(rounds["step"]),
        "ceiling": median([(e + te + s) / (te + s) for e, te, s in per_round]),
        "ceiling_with_text": median([(e + te + s) / s for e, te, s in per_round]),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolutions", nargs="+", type=int, default=[64, 256, 512])
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.add_argument("--time", action="store_true", help="also time the networks on this machine")
    p.add_argument("--batch-size", type=int, default=8, help="images per timed batch (--time)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds of the three networks (--time)")
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
    if args.time:
        lines += [
            f"\nseconds on this machine, batch {args.batch_size}, {torch.get_num_threads()} threads:",
            "| resolution | encoder s | text s | U-Net step s | ceiling | with text |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            timed = time_components(config, row["resolution"], args.batch_size, args.repeats)
            row["timed"] = timed
            lines.append(
                f"| {row['resolution']} | {timed['encoder_s']:.3f} | {timed['text_s']:.3f} "
                f"| {timed['unet_step_s']:.3f} | {timed['ceiling']:.2f}x | {timed['ceiling_with_text']:.2f}x |"
            )
    sys.stdout.write("\n".join(lines) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps({"overrides": args.overrides, "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
