"""Measure a stage-1 autoencoder's latent statistics (scale factor 1/std, per-channel mean and std)
on validation batches, print them as JSON, and with --write store them in the checkpoint, where
stage 2 picks up the scale factor (when diffusion.scale_factor is null).

    python scripts/latent_stats.py --ckpt RUN/autoencoder/checkpoints/last.ckpt --batches 8 --write

Data: the built-in shapes set under --data-root (default data/shapes), or webdataset shards with
--val-shards.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ldm.autoencoder.latent_stats import CHECKPOINT_KEY, compute_latent_stats
from ldm.checkpoint import load_autoencoder, read_checkpoint
from ldm.config import DataConfig
from ldm.data.decode import model_inputs
from ldm.data.shards import build_datamodule


def main(argv: list[str] | None = None) -> dict:
    """Parse flags, measure, print, and optionally write back; returns the statistics."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="stage-1 checkpoint")
    parser.add_argument("--batches", type=int, default=8, help="validation batches to measure")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-root", default="data/shapes", help="shapes set folder")
    parser.add_argument("--val-shards", default=None, help="webdataset validation shards instead")
    parser.add_argument("--write", action="store_true", help="store the statistics in the checkpoint")
    args = parser.parse_args(argv)
    checkpoint = read_checkpoint(args.ckpt, expected_stage="autoencoder")
    autoencoder = load_autoencoder(args.ckpt)
    resolution = checkpoint["hyper_parameters"]["autoencoder"]["resolution"]
    if args.val_shards:
        data = DataConfig(name="webdataset", val_shards=args.val_shards, train_shards=args.val_shards)
    else:
        data = DataConfig(root=args.data_root, resolution=resolution)
    data.batch_size = args.batch_size
    datamodule = build_datamodule(data)
    datamodule.setup("fit")
    images = (model_inputs(batch)["image"] for batch in datamodule.val_dataloader())
    stats = compute_latent_stats(autoencoder, images, args.batches)
    json.dump(stats, sys.stdout, indent=2)
    sys.stdout.write("\n")
    if args.write:
        checkpoint[CHECKPOINT_KEY] = stats
        torch.save(checkpoint, args.ckpt)
    return stats


if __name__ == "__main__":
    main()
