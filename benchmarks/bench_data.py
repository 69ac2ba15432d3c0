"""Data pipeline throughput: the training stream against a bare PIL decode loop, same JPEGs, same workers.

    python benchmarks/bench_data.py --resolutions 64 256 --workers 2 --out data-bench.json

Writes (once, into --root) shards of synthetic photo-like JPEGs with LAION-like sizes (short side
256-768 px, aspect 3:4 to 16:9, quality 90), then times, per resolution and worker count:

* ``bare``: a DataLoader over the same shards, split the same way among the workers, whose workers
  only read each tar member and decode the JPEG with PIL (``Image.open(...).convert("RGB")``), the
  issue's reference; and, for context, the same loop decoding with simplejpeg (libjpeg-turbo into an
  array, the pipeline's own decoder), once per worker count;
* ``pipeline``: ``ShardDataModule.train_dataloader()`` as training uses it: shuffle buffer, decode,
  RGB conversion, short-side resize, random crop, flip, tensor conversion and collation into
  batches of B x 3 x R x R; with JPEG draft decoding (the default) and without it.

Each cell is the best of --repeats rounds (images per second of a full pass); a round times one
pass of the bare loop and one of the pipeline, so that the machine's drifts hit both alike.
``ratio`` is best against best; ``median_round_ratio`` the median of the rounds' own ratios (each
round's pipeline pass against the bare pass just before it), the steadier of the two on a VM
whose speed drifts between rounds. Other work on the machine lowers the numbers, so run it alone.
Pipeline batches are uint8 (training converts them to float on the device).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ldm.data.shard_writer import ShardWriter, read_complete_manifest
from ldm.training.datamodule import ShardDataModule

log = logging.getLogger("bench_data")


def photo(rng: np.random.Generator) -> Image.Image:
    """A smooth random image with grain, short side 256-768 px, aspect 3:4 to 16:9."""
    short = int(rng.integers(256, 769))
    aspect = float(rng.uniform(0.75, 16 / 9))
    width, height = (round(short * aspect), short) if rng.random() < 0.7 else (short, round(short * aspect))
    coarse = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def write_jpeg_shards(root: Path, n_images: int, per_shard: int, seed: int = 0) -> list[str]:
    """Shards of KEY.jpg + KEY.txt (+ KEY.json), written once (reused while their manifest matches); returns
    their paths."""
    wanted = {"images": n_images, "per_shard": per_shard, "seed": seed}
    manifest = read_complete_manifest(root)
    if manifest is not None and all(manifest.get(k) == v for k, v in wanted.items()):
        return [str(root / name) for name in manifest["shards"]]
    rng = np.random.default_rng(seed)
    with ShardWriter(root, "%06d.tar", per_shard, metadata=wanted) as sink:
        for j in range(n_images):
            image = photo(rng)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            meta = {"width": image.width, "height": image.height}
            sink.write(
                {
                    "__key__": f"{j:09d}",
                    "jpg": buffer.getvalue(),
                    "txt": b"a photo",
                    "json": json.dumps(meta).encode(),
                }
            )
    log.info("wrote %d JPEGs in %d shards to %s", n_images, len(sink.shards), root)
    return [str(root / name) for name in sink.shards]


def pil_decode(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").size


def turbo_decode(data: bytes) -> tuple[int, int]:
    height, width, _ = simplejpeg.decode_jpeg(data, "RGB").shape
    return width, height


BARE_DECODERS = {"pil": pil_decode, "simplejpeg": turbo_decode}


class BareDecode(IterableDataset):
    """Each worker reads its shards (the same split as the pipeline) and only decodes the JPEGs."""

    def __init__(self, urls: list[str], decoder: str = "pil"):
        self.urls = urls
        self.decode = BARE_DECODERS[decoder]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for url in self.urls[worker::workers]:
            with tarfile.open(url) as tar:
                for member in tar:
                    if member.name.endswith(".jpg"):
                        yield self.decode(tar.extractfile(member).read())


def images_per_second(loader: DataLoader) -> tuple[float, int]:
    """The rate of one full pass (images per second), and its images."""
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["image"]) if isinstance(batch, dict) else len(batch)
    return count / (time.perf_counter() - start), count


def interleaved_rates(loaders: list[DataLoader], repeats: int) -> list[list[tuple[float, int]]]:
    """Each loader's (rate, images) in each of `repeats` rounds of one pass each, after an untimed pass each.

    Passes alternate between the loaders, so that drifts in the machine's speed (large on a shared
    VM) hit them alike; the untimed pass starts the (persistent) workers.
    """
    rounds: list[list[tuple[float, int]]] = [[] for _ in loaders]
    for round_ in range(repeats + 1):
        for i, loader in enumerate(loaders):
            rate, count = images_per_second(loader)
            if round_ > 0:
                rounds[i].append((rate, count))
    return rounds


def best(rounds: list[tuple[float, int]]) -> tuple[float, int]:
    """The fastest round's (rate, images)."""
    return max(rounds)


def median_ratio(rounds: list[tuple[float, int]], reference: list[tuple[float, int]]) -> float:
    """The median over rounds of rate / reference rate within the same round (paired, so drift cancels)."""
    return float(np.median([r[0] / ref[0] for r, ref in zip(rounds, reference)]))


def bare_loader(urls: list[str], workers: int, batch_size: int, decoder: str = "pil") -> DataLoader:
    return DataLoader(
        BareDecode(urls, decoder),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        persistent_workers=workers > 0,
    )


def pipeline_loader(
    urls: list[str], workers: int, batch_size: int, resolution: int, draft: bool
) -> DataLoader:
    module = ShardDataModule(
        urls,
        [],
        batch_size=batch_size,
        resolution=resolution,
        num_workers=workers,
        shuffle_buffer=1000,
        seed=0,
        crop="random",
        flip=True,
        jpeg_draft=draft,
    )
    return module.train_dataloader()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/bench-jpeg", help="where the JPEG shards are written (once)")
    p.add_argument("--images", type=int, default=2000, help="JPEGs in the benchmark set")
    p.add_argument("--per-shard", type=int, default=250, help="JPEGs per shard")
    p.add_argument("--resolutions", nargs="+", type=int, default=[64, 256])
    p.add_argument("--workers", nargs="+", type=int, default=[2], help="DataLoader worker counts")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="passes per cell; the best counts")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    urls = write_jpeg_shards(Path(args.root), args.images, args.per_shard)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "images": args.images,
        "batch_size": args.batch_size,
    }
    rows = []
    turbo_rates = {}
    for workers in args.workers:
        bare = bare_loader(urls, workers, args.batch_size)
        turbo = bare_loader(urls, workers, args.batch_size, "simplejpeg")
        turbo_rates[workers] = round(best(interleaved_rates([turbo], args.repeats)[0])[0], 1)
        log.info("bare simplejpeg decode, %d workers: %.1f images/s", workers, turbo_rates[workers])
        for resolution in args.resolutions:
            for draft in (True, False):
                loader = pipeline_loader(urls, workers, args.batch_size, resolution, draft)
                bare_rounds, rounds = interleaved_rates([bare, loader], args.repeats)
                (bare_rate, n_bare), (rate, n) = best(bare_rounds), best(rounds)
                row = {
                    "workers": workers,
                    "resolution": resolution,
                    "jpeg_draft": draft,
                    "bare_images_per_s": round(bare_rate, 1),
                    "pipeline_images_per_s": round(rate, 1),
                    "ratio": round(rate / bare_rate, 3),
                    "median_round_ratio": round(median_ratio(rounds, bare_rounds), 3),
                    "bare_images": n_bare,
                    "pipeline_images": n,  # whole batches only: the last partial batch per worker is dropped
                    "load_1min": round(os.getloadavg()[0], 2),
                }
                rows.append(row)
                log.info("%s", json.dumps(row))
    if args.out:
        bare_turbo = {str(w): rate for w, rate in turbo_rates.items()}
        Path(args.out).write_text(
            json.dumps({"meta": meta, "rows": rows, "bare_simplejpeg": bare_turbo}, indent=2)
        )
    lines = [
        "| workers | resolution | JPEG draft | bare PIL decode (img/s) | pipeline (img/s) | ratio | median round ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['resolution']} | {'on' if r['jpeg_draft'] else 'off'} | "
            f"{r['bare_images_per_s']} | {r['pipeline_images_per_s']} | {r['ratio']:.2f} | "
            f"{r['median_round_ratio']:.2f} |"
        )
    lines.append("")
    lines += [f"bare simplejpeg decode, {w} workers: {rate} img/s" for w, rate in turbo_rates.items()]
    sys.stdout.write("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
