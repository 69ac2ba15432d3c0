"""The webdataset streaming pipeline: tar shards of image + caption -> batches of tensors.

Shards hold ``KEY.png`` / ``KEY.jpg`` (or jpeg, webp) images, ``KEY.txt`` captions and ``KEY.json``
metadata, as written by img2dataset for LAION and by ``ldm.data.shapes``. ``ldm.data.stream``
reads, splits and shuffles them, ``ldm.data.decode`` decodes them; this module builds the two from
a data config. The training layer's ``ShardDataModule`` (``ldm.training.datamodule``) serves them
to Lightning and saves the training stream's position in checkpoints.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ldm.data.decode import ImageDecoder
from ldm.data.stream import ShardStream
from ldm.data.urls import expand_urls

if TYPE_CHECKING:
    from ldm.config import DataConfig
    from ldm.data.shapes import ShapesShards

logger = logging.getLogger(__name__)

DATA_SETS = ("shapes", "shapes_compose", "webdataset")
"""The values of data.name."""
SYNTHETIC_SETS = ("shapes", "shapes_compose")
"""The built-in sets, written from data.seed on first use."""
DECODER_OPTIONS = ("resolution", "caption_key", "crop", "flip", "sample_filter", "jpeg_draft", "uint8")


def shard_dataset(urls: list[str], **options: Any) -> ShardStream:
    """Decoded image-text samples of webdataset shards (see ``ldm.data.decode.decode_stream``).

    Options are ImageDecoder's (resolution, caption_key, crop, flip, sample_filter, jpeg_draft, uint8) and
    ShardStream's (shuffle, shuffle_buffer, seed, split_nodes, resampled, batches_per_epoch, batch_size).
    """
    decoder = ImageDecoder(**{k: options.pop(k) for k in DECODER_OPTIONS if k in options})
    return ShardStream(urls, decoder=decoder, **options)


def ensure_synthetic_set(cfg: DataConfig) -> ShapesShards:
    """The built-in set of a data config (data.name in SYNTHETIC_SETS), written on first use."""
    if cfg.name == "shapes_compose":
        from ldm.data.compose import ensure_compose_dataset

        return ensure_compose_dataset(cfg)
    from ldm.data.shapes import ensure_shapes_dataset

    return ensure_shapes_dataset(cfg)


def existing_synthetic_set(cfg: DataConfig) -> ShapesShards | None:
    """The built-in set of a data config if a complete copy is on disk, else None (nothing is written)."""
    if cfg.name == "shapes_compose":
        from ldm.data.compose import existing_compose_dataset

        return existing_compose_dataset(cfg)
    from ldm.data.shapes import existing_shapes_dataset

    return existing_shapes_dataset(cfg)


def shard_urls(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """The training and validation shards of a data config (a built-in set is written on first use)."""
    if cfg.name in SYNTHETIC_SETS:
        shards = ensure_synthetic_set(cfg)
        return shards.train, shards.val
    if cfg.name == "webdataset":
        if not cfg.train_shards:
            raise ValueError(
                "data=webdataset needs data.train_shards (a brace pattern, list or @file of URLs)"
            )
        return expand_urls(cfg.train_shards), expand_urls(cfg.val_shards) if cfg.val_shards else []
    raise ValueError(f"unknown data set '{cfg.name}'; available: {', '.join(DATA_SETS)}")
