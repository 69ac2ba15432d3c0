"""``python -m ldm.data.make_shards``: a folder of captioned images -> webdataset shards (`data=webdataset`).

    python -m ldm.data.make_shards --images photos/ --out data/photos/ --samples-per-shard 10000
    python -m ldm.data.make_shards --images photos/ --captions captions.csv --out data/photos/

Captions come from sidecar .txt files next to each image, or from --captions (CSV or parquet with
'path' and 'caption' columns). Then train with:

    python -m ldm.train data=webdataset "data.train_shards='data/photos/{000000..000009}.tar'"

(``scripts/make_shards.py`` is this command.)
"""

from __future__ import annotations

import logging

from ldm.cli import command_parser, run_command
from ldm.data.writer import WriteReport, write_image_folder

log = logging.getLogger(__name__)


def run(argv: list[str] | None = None) -> WriteReport:
    """Parse the flags and write the shards; returns what was written and skipped (raises on bad input)."""
    p = command_parser("python -m ldm.data.make_shards", __doc__)
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
    log.info(
        "wrote %d samples in %d shards to %s (skipped: %s)",
        report.written,
        len(report.shards),
        args.out,
        skipped,
    )
    if report.shards:
        log.info(
            "train with: python -m ldm.train data=webdataset \"data.train_shards='%s/{%s..%s}.tar'\"",
            args.out.rstrip("/"),
            report.shards[0].rsplit("/", 1)[-1][:-4],
            report.shards[-1].rsplit("/", 1)[-1][:-4],
        )
    return report


def main(argv: list[str] | None = None) -> None:
    """The ``python -m ldm.data.make_shards`` / ``ldm-make-shards`` command."""
    run_command(run, argv)


if __name__ == "__main__":
    main()
