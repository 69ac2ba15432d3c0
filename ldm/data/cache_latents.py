"""``python -m ldm.data.cache_latents``: image shards encoded once by a frozen autoencoder, for stage 2.

    python -m ldm.data.cache_latents --ckpt RUN/autoencoder/checkpoints/last.ckpt --data shapes \\
        --resolution 64 --out data/shapes-latents-64
    python -m ldm.data.cache_latents --ckpt AE.ckpt --shards '/data/laion/{000000..000099}.tar' \\
        --val-shards '/data/laion-val/000000.tar' --resolution 256 --out /data/laion-latents

Images are read in shard order, centre-cropped, not augmented; each sample's posterior (mean and
log-variance, ``ldm.data.latents``) is written with its caption and metadata, and ``cache.json``
beside the shards records the autoencoder's fingerprint. Then train with the command printed at
the end (``stage=diffusion data=webdataset data.cached_latents=true ...``).

With ``--text``, each caption's per-token text-encoder states are cached too, and the printed
command trains with ``data.cached_text=true``, skipping the text encoder. The text encoder is the
one ``python -m ldm.train`` builds from the Hydra overrides given after ``--`` (its conditioner
config, with the weights of ``diffusion.init_from`` when that file holds a text encoder):

    python -m ldm.data.cache_latents --ckpt AE.ckpt --shards '/data/laion/{000000..000099}.tar' \\
        --resolution 256 --out /data/laion-latents --text -- experiment=sd2_base

Training checks the fingerprint of its text encoder against the cache. Stored states take
context_length x width values per sample (77 x 1024 for SD 2: 158 kB in float16, 315 kB in float32).
``scripts/cache_latents.py`` is this command.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path

import torch
from tqdm import tqdm

from ldm.cli import command_parser, run_command
from ldm.config import DataConfig
from ldm.data.latents import (
    DTYPES,
    image_batches,
    weights_fingerprint,
    write_cache_info,
    write_latent_shards,
)
from ldm.data.shards import shard_urls
from ldm.data.urls import expand_urls
from ldm.weights.checkpoint import autoencoder_weights, load_autoencoder, read_checkpoint

log = logging.getLogger(__name__)


def split_urls(args: argparse.Namespace) -> dict[str, list[str]]:
    """The image shards of each split to cache."""
    if args.shards:
        splits = {"train": expand_urls(args.shards)}
        if args.val_shards:
            splits["val"] = expand_urls(args.val_shards)
        return splits
    data = DataConfig(
        name="shapes",
        root=args.data_root,
        resolution=args.resolution,
        num_train=args.num_train,
        num_val=args.num_val,
    )
    train, val = shard_urls(data)
    return {"train": train, "val": val}


def frozen_text_encoder(overrides: list[str]) -> torch.nn.Module:
    """The frozen text encoder that ``python -m ldm.train OVERRIDES`` trains a new stage 2 with."""
    from ldm.training.config_store import compose_config  # Hydra: only for --text
    from ldm.training.text_encoder import training_text_encoder

    config = compose_config(overrides)
    if config.conditioner.trainable:
        raise ValueError(
            "--text caches a frozen text encoder's states; the config has conditioner.trainable=true"
        )
    return training_text_encoder(config)


def run(argv: list[str] | None = None) -> dict:
    """Parse flags, encode every split, write cache.json; returns its content (raises on bad input)."""
    parser = command_parser("python -m ldm.data.cache_latents", __doc__)
    parser.add_argument(
        "--ckpt", required=True, help="stage-1 (or stage-2) checkpoint holding the autoencoder"
    )
    parser.add_argument("--out", required=True, help="folder for the latent shards and cache.json")
    parser.add_argument("--data", choices=("shapes", "webdataset"), default="shapes", help="image set")
    parser.add_argument("--data-root", default="data/shapes", help="shapes set folder (written if missing)")
    parser.add_argument("--num-train", type=int, default=DataConfig.num_train, help="shapes training images")
    parser.add_argument("--num-val", type=int, default=DataConfig.num_val, help="shapes validation images")
    parser.add_argument(
        "--shards", default=None, help="webdataset training shards (brace pattern, list, @file)"
    )
    parser.add_argument("--val-shards", default=None, help="webdataset validation shards")
    parser.add_argument(
        "--resolution", type=int, default=None, help="image side (default: the autoencoder's)"
    )
    parser.add_argument("--caption-key", default="txt", help="sample member holding the caption")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the stored moments")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument(
        "--text", action="store_true", help="also cache the text encoder's states of each caption"
    )
    parser.add_argument(
        "overrides", nargs="*", help="with --text, after '--': the Hydra overrides of the training run"
    )
    args = parser.parse_args(argv)
    if args.data == "webdataset" and not args.shards:
        parser.error("--data webdataset needs --shards")
    if args.overrides and not args.text:
        parser.error(f"Hydra overrides ({' '.join(args.overrides)}) choose the text encoder of --text only")
    text_encoder = frozen_text_encoder(args.overrides).to(args.device) if args.text else None
    hparams, state = autoencoder_weights(read_checkpoint(args.ckpt))  # its size; the weights cache.json names
    autoencoder = load_autoencoder(args.ckpt).to(args.device)
    args.resolution = args.resolution or int(hparams["resolution"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, urls in split_urls(args).items():
        loader, counter = image_batches(
            urls,
            resolution=args.resolution,
            batch_size=args.batch_size,
            caption_key=args.caption_key,
            num_workers=args.num_workers,
        )
        batches = tqdm(loader, desc=f"{split}: {len(urls)} shards", unit="batch")
        written = write_latent_shards(
            autoencoder,
            batches,
            out,
            split,
            dtype=args.dtype,
            samples_per_shard=args.samples_per_shard,
            text_encoder=text_encoder,
        )
        splits[split] = {
            **written,
            "skipped": {k: v for k, v in counter.totals().items() if k != "read" and v},
        }
        context_shape = splits[split].pop("context_shape", None)
        log.info("%s: %d samples in %d shards (%s)", split, written["samples"], written["shards"], out)
    if not splits["train"]["samples"]:
        raise ValueError(f"no training sample was cached (skipped: {splits['train']['skipped'] or 'none'})")
    info = {
        "autoencoder": {"fingerprint": weights_fingerprint(state), "checkpoint": str(args.ckpt)},
        "resolution": args.resolution,
        "moments_shape": splits["train"]["moments_shape"],
        "dtype": args.dtype,
        "splits": {name: {k: v for k, v in s.items() if k != "moments_shape"} for name, s in splits.items()},
    }
    if text_encoder is not None:
        info["text_encoder"] = {
            "fingerprint": weights_fingerprint(text_encoder.state_dict()),
            "overrides": args.overrides,
            "context_shape": context_shape,
        }
    write_cache_info(out, info)
    command = [
        "python", "-m", "ldm.train", "stage=diffusion", f"autoencoder.ckpt_path={args.ckpt}", "data=webdataset",
        "data.cached_latents=true", "data.crop=center", f"data.resolution={args.resolution}",
        f"data.train_shards='{out / splits['train']['pattern']}'",
    ]  # fmt: skip
    if "val" in splits and splits["val"]["pattern"]:
        command.append(f"data.val_shards='{out / splits['val']['pattern']}'")
    if text_encoder is not None:
        command += ["data.cached_text=true", *args.overrides]
    log.info("train from the cache with:\n  %s", shlex.join(command))
    return info


def main(argv: list[str] | None = None) -> None:
    """The ``python -m ldm.data.cache_latents`` / ``ldm-cache-latents`` command."""
    run_command(run, argv)


if __name__ == "__main__":
    main()
