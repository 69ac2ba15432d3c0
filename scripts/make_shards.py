"""Turn a folder of captioned images into webdataset shards that `data=webdataset` reads.

    python scripts/make_shards.py --images photos/ --out data/photos/ --samples-per-shard 10000
    python scripts/make_shards.py --images photos/ --captions captions.csv --out data/photos/

Captions come from sidecar .txt files next to each image, or from --captions (CSV or parquet with
'path' and 'caption' columns). Then train with:

    python -m ldm.train data=webdataset "data.train_shards='data/photos/{000000..000009}.tar'"
"""

from __future__ import annotations

import argparse
import logging
import sys

from ldm.data.writer import write_image_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--images", required=True, help="folder of .png/.jpg/.jpeg/.webp images (searched recursively)"
    )
    p.add_argument("--out", required=True, help="folder for the NNNNNN.tar shards")
    p.add_argument(
        "--captions", default=None, help="CSV or parquet of path, caption (default: sidecar .txt files)"
    )
    p.add_argument("--samples-per-shard", type=int, default=10_000, help="samples per tar shard")
    args = p.parse_args(argv)
    report = write_image_folder(
        args.images, args.out, samples_per_shard=args.samples_per_shard, captions=args.captions
    )
    skipped = ", ".join(f"{k}={v}" for k, v in report.skipped.items()) or "none"
    logging.getLogger("make_shards").info(
        "wrote %d samples in %d shards to %s (skipped: %s)",
        report.written,
        len(report.shards),
        args.out,
        skipped,
    )
    if report.shards:
        logging.getLogger("make_shards").info(
            "train with: python -m ldm.train data=webdataset \"data.train_shards='%s/{%s..%s}.tar'\"",
            args.out.rstrip("/"),
            report.shards[0].rsplit("/", 1)[-1][:-4],
            report.shards[-1].rsplit("/", 1)[-1][:-4],
        )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
