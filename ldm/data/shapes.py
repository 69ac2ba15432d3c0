"""The built-in synthetic "shapes" set: one filled, coloured shape on black, with a caption.

Every image is determined by the seed, so a run can regenerate the same set anywhere. The set is
written as webdataset tar shards (``KEY.png``, ``KEY.txt``, ``KEY.json``), the same format as real
LAION shards, so that training reads it through the same streaming path.

The renderer (``render_shapes``), the hashed split (``hashed_split``) and the writer of a set of
layouts (``write_synthetic_set``) also serve the compose world (``ldm.data.compose``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing as mp
import os
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image, ImageDraw

from ldm.data.shard_writer import ShardWriter, read_complete_manifest, staged_folder, write_manifest

if TYPE_CHECKING:
    from ldm.config import DataConfig

logger = logging.getLogger(__name__)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
"""Pure hues: each channel is 0 or 255, so anti-aliased edges on black keep the hue."""

SHAPES = ("circle", "square", "triangle")

TEMPLATES = (
    "a {color} {shape}",
    "a {size} {color} {shape}",
    "a {color} {shape} {position}",
    "a {size} {color} {shape} {position}",
)
"""Caption templates; the first is the plain form that the evaluator prompts with."""

MIN_SIZE = 0.4
MAX_SIZE = 0.8
"""Bounds of the shape's side as a fraction of the image side."""

SUPERSAMPLE = 4
"""Shapes are drawn at this multiple of the resolution and box-filtered down (smooth edges)."""

_SPLIT_STREAMS = {"train": 0, "val": 1}
"""Each split draws from its own random stream, derived from the seed and this number."""

_ROWS = ("top", "middle", "bottom")
_COLUMNS = ("left", "center", "right")
_POSITION_WORDS = {
    ("top", "left"): "in the top left",
    ("top", "center"): "at the top",
    ("top", "right"): "in the top right",
    ("middle", "left"): "on the left",
    ("middle", "center"): "in the center",
    ("middle", "right"): "on the right",
    ("bottom", "left"): "in the bottom left",
    ("bottom", "center"): "at the bottom",
    ("bottom", "right"): "in the bottom right",
}
_VAL_EIGHTHS = 8
"""One image in this many (by a hash of its pixels' parameters) is reserved for validation."""
_PARALLEL_MIN_SAMPLES = 4_000
"""Splits smaller than this are rendered in-process (starting workers would cost more than it saves)."""
_MANIFEST_VERSION = 1


class DrawnShape(Protocol):
    """What the renderer needs of a shape: its kind, colour and box in supersampled pixels."""

    @property
    def shape(self) -> str: ...
    @property
    def color(self) -> str: ...
    @property
    def side(self) -> int: ...
    @property
    def left(self) -> int: ...
    @property
    def top(self) -> int: ...


@dataclass(frozen=True)
class ShapeLayout:
    """Where and how one shape is drawn, in units of the supersampled canvas (resolution * 4)."""

    shape: str
    color: str
    side: int
    """Side of the shape's bounding box (width = height)."""
    left: int
    """Column of the bounding box's left edge."""
    top: int
    """Row of the bounding box's top edge."""
    resolution: int
    """Side of the final image in pixels."""
    template: int
    """Index into TEMPLATES of the caption form."""

    @property
    def size(self) -> float:
        """Side of the shape as a fraction of the image side."""
        return self.side / (self.resolution * SUPERSAMPLE)

    @property
    def cx(self) -> float:
        """Horizontal centre as a fraction of the image width."""
        return (self.left + self.side / 2) / (self.resolution * SUPERSAMPLE)

    @property
    def cy(self) -> float:
        """Vertical centre as a fraction of the image height."""
        return (self.top + self.side / 2) / (self.resolution * SUPERSAMPLE)


@dataclass(frozen=True)
class ShapeSample:
    """One rendered example: the image, its caption and its metadata record."""

    key: str
    image: Image.Image
    caption: str
    metadata: dict


@dataclass(frozen=True)
class ShapesShards:
    """The shard files of a written shapes set (absolute paths, sorted)."""

    train: list[str]
    val: list[str]


def size_word(size: float) -> str:
    """small, medium or large: the third of [MIN_SIZE, MAX_SIZE] that the size fraction falls in."""
    third = (MAX_SIZE - MIN_SIZE) / 3
    if size < MIN_SIZE + third:
        return "small"
    if size < MIN_SIZE + 2 * third:
        return "medium"
    return "large"


def position_words(cx: float, cy: float) -> str:
    """Where the centre lies on a 3x3 grid of the image, e.g. "in the top left" or "in the center"."""
    column = _COLUMNS[min(int(cx * 3), 2)]
    row = _ROWS[min(int(cy * 3), 2)]
    return _POSITION_WORDS[(row, column)]


def caption_for(layout: ShapeLayout) -> str:
    """The caption of a layout from its template; it always names the colour and the shape."""
    return TEMPLATES[layout.template].format(
        color=layout.color,
        shape=layout.shape,
        size=size_word(layout.size),
        position=position_words(layout.cx, layout.cy),
    )


def metadata_for(layout: ShapeLayout) -> dict:
    """The json record stored next to each image (width and height are the image's, in pixels)."""
    return {
        "shape": layout.shape,
        "color": layout.color,
        "size": layout.size,
        "cx": layout.cx,
        "cy": layout.cy,
        "width": layout.resolution,
        "height": layout.resolution,
        "template": layout.template,
    }


def render_shapes(shapes: Sequence[DrawnShape], resolution: int) -> Image.Image:
    """Draw filled shapes (boxes in units of the supersampled canvas, resolution * 4) on black at 4x
    and box-filter them down to a ``resolution``-pixel RGB image."""
    canvas_side = resolution * SUPERSAMPLE
    canvas = Image.new("RGB", (canvas_side, canvas_side), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for item in shapes:
        fill = COLORS[item.color]
        # PIL's boxes include their last row and column, hence the - 1.
        x0, y0 = item.left, item.top
        x1, y1 = x0 + item.side - 1, y0 + item.side - 1
        if item.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif item.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif item.shape == "triangle":
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
        else:
            raise ValueError(f"unknown shape '{item.shape}'; available: {', '.join(SHAPES)}")
    return canvas.resize((resolution, resolution), Image.Resampling.BOX)


def render_shape(layout: ShapeLayout) -> Image.Image:
    """Draw the layout's filled shape on black at 4x and box-filter it down to an RGB image."""
    return render_shapes([layout], layout.resolution)


def _side_bounds(resolution: int) -> tuple[int, int]:
    """Smallest and largest side, in supersampled pixels, whose fraction lies in [MIN_SIZE, MAX_SIZE]."""
    canvas_side = resolution * SUPERSAMPLE
    return math.ceil(MIN_SIZE * canvas_side), math.floor(MAX_SIZE * canvas_side)


def hashed_split(identity: str) -> str:
    """The split of an image named by ``identity`` (a string that fixes its pixels): a fixed
    pseudo-random eighth of all images is "val".

    Partitioning the space of images (rather than drawing both splits freely) keeps train and val
    disjoint whatever their sizes, and each split's images do not depend on the other's count.
    """
    return "val" if zlib.crc32(identity.encode("ascii")) % _VAL_EIGHTHS == 0 else "train"


def split_of(layout: ShapeLayout) -> str:
    """The split that a layout's image belongs to (``hashed_split`` of its box, shape and colour)."""
    return hashed_split(
        f"{layout.shape},{layout.color},{layout.side},{layout.left},{layout.top},{layout.resolution}"
    )


def _draw_layouts(rng: np.random.Generator, num: int, resolution: int, split: str) -> list[ShapeLayout]:
    """Draw ``num`` random layouts of one split, uniformly among the images that belong to it."""
    canvas_side = resolution * SUPERSAMPLE
    low, high = _side_bounds(resolution)
    colors = list(COLORS)
    layouts: list[ShapeLayout] = []
    while len(layouts) < num:
        count = 2 * (num - len(layouts)) * (_VAL_EIGHTHS if split == "val" else 1)
        shape = rng.integers(0, len(SHAPES), count)
        color = rng.integers(0, len(colors), count)
        side = rng.integers(low, high + 1, count)
        # Positions uniform over the places where the whole box fits.
        left = np.floor(rng.random(count) * (canvas_side - side + 1)).astype(int)
        top = np.floor(rng.random(count) * (canvas_side - side + 1)).astype(int)
        template = rng.integers(0, len(TEMPLATES), count)
        for i in range(count):
            layout = ShapeLayout(
                shape=SHAPES[shape[i]],
                color=colors[color[i]],
                side=int(side[i]),
                left=int(left[i]),
                top=int(top[i]),
                resolution=resolution,
                template=int(template[i]),
            )
            if split_of(layout) == split:
                layouts.append(layout)
    return layouts[:num]


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The random stream of one split ("train" or "val"), derived from the set's seed."""
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"unknown split '{split}'; available: {', '.join(_SPLIT_STREAMS)}")
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_STREAMS[split]]))


def check_count(num: int) -> None:
    """Refuse a negative number of samples to generate."""
    if num < 0:
        raise ValueError(f"num must be non-negative, got {num}")


def generate_shapes(num: int, *, resolution: int, seed: int, split: str = "train") -> Iterator[ShapeSample]:
    """Render the first ``num`` samples of one split, exactly as ``write_shapes_dataset`` writes them."""
    rng = split_rng(seed, split)
    check_count(num)
    check_set_arguments(resolution=resolution, seed=seed, num_train=1, num_val=0, samples_per_shard=1)
    for index, layout in enumerate(_draw_layouts(rng, num, resolution, split)):
        yield _sample(index, layout)


def _sample(index: int, layout: ShapeLayout) -> ShapeSample:
    """The sample of a layout, keyed by its index in the split."""
    return ShapeSample(
        key=f"{index:09d}",
        image=render_shape(layout),
        caption=caption_for(layout),
        metadata=metadata_for(layout),
    )


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def check_set_arguments(
    *,
    resolution: int,
    seed: int,
    num_train: int,
    num_val: int,
    samples_per_shard: int,
    min_resolution: int = 16,
) -> None:
    """Refuse a synthetic set's resolution, seed, sizes or shard size where they cannot be written."""
    if resolution < min_resolution:
        raise ValueError(f"resolution must be at least {min_resolution} pixels, got {resolution}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if num_train < 1:
        raise ValueError(f"num_train must be at least 1, got {num_train}")
    if num_val < 0:
        raise ValueError(f"num_val must be non-negative, got {num_val}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")


SampleOf = Callable[[int, Any], ShapeSample]
"""Renders the layout with a given index of a split (a module-level function: worker processes pickle it)."""


def _shard_samples(layouts: list, first_index: int, sample_of: SampleOf) -> list[dict[str, bytes]]:
    """The webdataset samples (png, txt, json) of consecutive layouts, numbered from ``first_index``."""
    samples = []
    for offset, layout in enumerate(layouts):
        sample = sample_of(first_index + offset, layout)
        samples.append(
            {
                "__key__": sample.key,
                "png": _png_bytes(sample.image),
                "txt": sample.caption.encode("utf-8"),
                "json": json.dumps(sample.metadata, sort_keys=True).encode("utf-8"),
            }
        )
    return samples


def _rendered_shards(
    layouts: list, samples_per_shard: int, sample_of: SampleOf
) -> Iterator[list[dict[str, bytes]]]:
    """Each shard's samples in order, rendered in forked worker processes when there is enough work to pay
    for them."""
    jobs = [
        (layouts[start : start + samples_per_shard], start, sample_of)
        for start in range(0, len(layouts), samples_per_shard)
    ]
    workers = min(len(jobs), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    if workers < 2 or len(layouts) < _PARALLEL_MIN_SAMPLES or "fork" not in mp.get_all_start_methods():
        for job in jobs:
            yield _shard_samples(*job)
        return
    # fork, not spawn: a spawned worker would spend longer importing torch than rendering its shards.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"))
    try:
        yield from pool.map(_shard_samples, *zip(*jobs))
    finally:
        pool.shutdown(cancel_futures=True)


def _write_shard(sink: ShardWriter, samples: list[dict[str, bytes]]) -> None:
    """Write one shard's samples (the writer closes the shard after the last of them)."""
    for sample in samples:
        sink.write(sample)


def _split_shards(manifest: dict) -> list[str]:
    """The shards of a manifest: its train and val lists (all that one written before "shards" has)."""
    return manifest["train"] + manifest["val"]


def _read_manifest(folder: Path, version: int = _MANIFEST_VERSION) -> dict | None:
    """The manifest of a complete set in ``folder``, or None if there is none, a listed shard is missing
    or it was written by another version."""
    manifest = read_complete_manifest(folder, legacy_shards=_split_shards)
    return manifest if manifest is not None and manifest.get("version") == version else None


def _shards_of(folder: Path, manifest: dict) -> ShapesShards:
    return ShapesShards(
        train=sorted(str(folder / name) for name in manifest["train"]),
        val=sorted(str(folder / name) for name in manifest["val"]),
    )


def set_folder(root: str | Path, *, resolution: int, seed: int, num_train: int, num_val: int) -> Path:
    """Where a synthetic set of these sizes lives: ``{root}/{resolution}px-seed{seed}-n{num_train}-{num_val}``
    (absolute)."""
    return Path(root).resolve() / f"{resolution}px-seed{seed}-n{num_train}-{num_val}"


def existing_synthetic_set(folder: Path, version: int = _MANIFEST_VERSION) -> ShapesShards | None:
    """The shards of the complete set in ``folder`` written by manifest ``version``, else None."""
    manifest = _read_manifest(folder, version)
    return _shards_of(folder, manifest) if manifest is not None else None


def write_synthetic_set(
    folder: Path,
    manifest: dict,
    layouts_of: Callable[[str, int], list],
    sample_of: SampleOf,
    name: str,
) -> ShapesShards:
    """Write a synthetic set into ``folder`` as ``{train,val}/NNNNNN.tar``, or reuse a complete copy there.

    ``manifest`` describes the set (its ``version``, ``num_train``, ``num_val``, ``samples_per_shard``
    and whatever fixes its images); ``layouts_of(split, num)`` draws a split's layouts and
    ``sample_of(index, layout)`` renders one. The set is written into a temporary sibling folder
    whose manifest is written last, and renamed into place when complete (``ldm.data.shard_writer``),
    so an interrupted run never leaves a set that looks finished.
    """
    existing = _read_manifest(folder, manifest["version"])
    if existing is not None:
        _note_reuse(folder, existing, manifest["samples_per_shard"], name)
        return _shards_of(folder, existing)

    num_train, num_val = manifest["num_train"], manifest["num_val"]
    logger.info(
        "generating the %s: %d train + %d val images at %dpx into %s",
        name,
        num_train,
        num_val,
        manifest["resolution"],
        folder,
    )
    started = time.perf_counter()
    manifest = dict(manifest)
    with staged_folder(folder, legacy_shards=_split_shards) as staging:
        for split, num in (("train", num_train), ("val", num_val)):
            layouts = layouts_of(split, num)
            shard_size = manifest["samples_per_shard"]
            with ShardWriter(staging, f"{split}/%06d.tar", shard_size, writes_manifest=False) as sink:
                for samples in _rendered_shards(layouts, shard_size, sample_of):
                    _write_shard(sink, samples)
            manifest[split] = sink.shards
        # The manifest is written last: its presence marks the set complete.
        write_manifest(staging, manifest["train"] + manifest["val"], num_train + num_val, manifest)

    written = _read_manifest(folder, manifest["version"])
    if written is None:
        raise RuntimeError(f"the {name} at {folder} has no valid manifest after writing it")
    logger.info("wrote the %s in %.1f s", name, time.perf_counter() - started)
    return _shards_of(folder, written)


def write_shapes_dataset(
    root: str | Path, *, resolution: int, seed: int, num_train: int, num_val: int, samples_per_shard: int
) -> ShapesShards:
    """Write the shapes set under ``root`` as tar shards, or reuse it if a complete copy is there.

    The set goes to ``{root}/{resolution}px-seed{seed}-n{num_train}-{num_val}/{train,val}/NNNNNN.tar``
    (``write_synthetic_set``).
    """
    sizes = dict(resolution=resolution, seed=seed, num_train=num_train, num_val=num_val)
    check_set_arguments(**sizes, samples_per_shard=samples_per_shard)
    manifest = {"version": _MANIFEST_VERSION, **sizes, "samples_per_shard": samples_per_shard}

    def layouts_of(split: str, num: int) -> list[ShapeLayout]:
        return _draw_layouts(split_rng(seed, split), num, resolution, split)

    return write_synthetic_set(set_folder(root, **sizes), manifest, layouts_of, _sample, "shapes set")


def _note_reuse(folder: Path, manifest: dict, samples_per_shard: int, name: str) -> None:
    if manifest["samples_per_shard"] != samples_per_shard:
        logger.warning(
            "reusing the %s at %s written with %d samples per shard, not %d "
            "(the images are the same; delete the folder to reshard)",
            name,
            folder,
            manifest["samples_per_shard"],
            samples_per_shard,
        )
    else:
        logger.debug("reusing the %s at %s", name, folder)


def config_sizes(cfg: DataConfig) -> dict[str, int]:
    """The resolution, seed and split sizes of a data config, as the set writers take them."""
    return dict(resolution=cfg.resolution, seed=cfg.seed, num_train=cfg.num_train, num_val=cfg.num_val)


def existing_shapes_dataset(cfg: DataConfig) -> ShapesShards | None:
    """The shapes set of a data config if a complete copy is on disk, else None (nothing is written)."""
    return existing_synthetic_set(set_folder(cfg.root, **config_sizes(cfg)))


def ensure_shapes_dataset(cfg: DataConfig) -> ShapesShards:
    """The shapes set described by a data config, generated on first use."""
    return write_shapes_dataset(cfg.root, **config_sizes(cfg), samples_per_shard=cfg.samples_per_shard)
