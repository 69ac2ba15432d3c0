"""Writing webdataset shards from an image folder with captions (what python -m ldm.data.make_shards runs).

Captions come from sidecar files (``cat.jpg`` + ``cat.txt``) or from a CSV / parquet table with
``path`` and ``caption`` columns (paths relative to the folder, or absolute). Image bytes are copied
as they are, not re-encoded; each sample's json holds ``width``, ``height`` and ``original_file``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image

from ldm.data.shard_writer import ShardWriter

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}


@dataclass
class WriteReport:
    """What a call of write_image_folder did."""

    shards: list[str] = field(default_factory=list)
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def read_caption_table(path: str | Path) -> dict[str, str]:
    """{path: caption} from a CSV (header with path, caption) or a parquet file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption table not found: {path}")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading parquet needs pyarrow (pip install pyarrow), or give a CSV") from None
        table = pq.read_table(path).to_pydict()
        rows = zip(table.get("path", []), table.get("caption", []))
    else:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"{path} needs 'path' and 'caption' columns, has {reader.fieldnames}")
            rows = [(r["path"], r["caption"]) for r in reader]
    return {str(p): str(c) for p, c in rows}


def image_folder_samples(
    folder: str | Path, captions: Optional[dict[str, str]], report: WriteReport
) -> Iterator[dict]:
    """Webdataset samples of the images below `folder`, in sorted order, skipping unusable ones."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) below {folder}")

    def skip(kind: str, path: Path) -> None:
        report.skipped[kind] = report.skipped.get(kind, 0) + 1
        log.warning("skipping %s: %s", path, kind.replace("_", " "))

    for path in images:
        relative = str(path.relative_to(folder))
        if captions is not None:
            caption = captions.get(relative, captions.get(str(path)))
        else:
            sidecar = path.with_suffix(".txt")
            caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None
        if caption is None:
            skip("missing_caption", path)
            continue
        try:
            with Image.open(path) as image:
                width, height = image.size
                image.verify()
        except Exception:
            skip("unreadable_image", path)
            continue
        meta = {"width": width, "height": height, "original_file": relative}
        yield {
            "__key__": f"{report.written:09d}",
            IMAGE_SUFFIXES[path.suffix.lower()]: path.read_bytes(),
            "txt": caption.encode("utf-8"),
            "json": json.dumps(meta).encode("utf-8"),
        }
        report.written += 1


def write_image_folder(
    folder: str | Path,
    outdir: str | Path,
    *,
    samples_per_shard: int = 10_000,
    captions: Optional[str | Path] = None,
) -> WriteReport:
    """Write the captioned images below `folder` as ``outdir/NNNNNN.tar`` shards, then
    ``outdir/manifest.json`` (``ldm.data.shard_writer``)."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    table = read_caption_table(captions) if captions is not None else None
    outdir = Path(outdir)
    report = WriteReport()
    with ShardWriter(outdir, "%06d.tar", samples_per_shard) as sink:
        for sample in image_folder_samples(folder, table, report):
            sink.write(sample)
        sink.metadata["skipped"] = report.skipped
    report.shards = [str(outdir / name) for name in sink.shards]
    return report
