"""The webdataset streaming pipeline: tar shards of image + caption -> batches of tensors.

Shards hold ``KEY.png`` / ``KEY.jpg`` (or jpeg, webp) images, ``KEY.txt`` captions and ``KEY.json``
metadata, as written by img2dataset for LAION and by ``ldm.data.shapes``. Each pass over a
``ShardStream`` reads every shard once; with shuffling, the shard order and the sample shuffle
buffer are seeded from the seed and the pass (epoch) number, so runs are reproducible.
"""

from __future__ import annotations

import functools
import io
import logging
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as pl
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

if TYPE_CHECKING:
    from ldm.config import DataConfig

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
"""Sample members read as the image, in order of preference."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert grayscale, palette, RGBA and other modes to RGB (transparency is dropped)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        # Going through RGBA avoids PIL's warning about palette transparency given as bytes.
        image = image.convert("RGBA")
    return image.convert("RGB")


def resize_and_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to ``resolution`` (antialiased bicubic) and crop the centre square."""
    width, height = image.size
    if (width, height) == (resolution, resolution):
        return image
    scale = resolution / min(width, height)
    new_width = max(resolution, round(width * scale))
    new_height = max(resolution, round(height * scale))
    image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left = (new_width - resolution) // 2
    top = (new_height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a float32 tensor 3xHxW with values in [-1, 1] (0 -> -1, 255 -> 1)."""
    array = np.asarray(image, dtype=np.uint8)  # h w c
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def decode_sample(sample: dict, resolution: int) -> dict:
    """Turn one raw webdataset sample (bytes per extension) into ``{"image", "caption", "key"}``."""
    extension = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if extension is None:
        raise ValueError(
            f"sample '{sample.get('__key__')}' in {sample.get('__url__')} has no image "
            f"(members: {sorted(k for k in sample if not k.startswith('__'))}; expected one of {IMAGE_EXTENSIONS})"
        )
    with Image.open(io.BytesIO(sample[extension])) as opened:
        image = to_rgb(opened)
        image.load()
    image = resize_and_center_crop(image, resolution)
    caption = sample["txt"].decode("utf-8") if "txt" in sample else ""
    return {"image": image_to_tensor(image), "caption": caption, "key": sample["__key__"]}


class ShardStream(IterableDataset):
    """An iterable over the samples of webdataset shards, split by node and by DataLoader worker.

    Each iteration is one pass over the shards. With ``shuffle``, pass ``e`` permutes the shard list
    with a generator seeded by ``(seed, e)`` (the same on every node and worker, so the split stays a
    partition), and shuffles samples in a buffer seeded by ``(seed, e, rank, worker)``. The pass number
    counts the iterations of this copy of the dataset (in a persistent DataLoader worker, the epochs)
    and can be pinned with ``set_epoch``. With ``split_nodes=False`` every node reads all shards
    (used for validation, so that no rank is left without batches).
    """

    def __init__(
        self,
        urls: list[str],
        *,
        resolution: int,
        shuffle: bool,
        shuffle_buffer: int,
        seed: int,
        split_nodes: bool = True,
    ):
        super().__init__()
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be non-negative, got {shuffle_buffer}")
        self.urls = list(urls)
        self.resolution = resolution
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.split_nodes = split_nodes
        self._epoch = 0
        self._passes_since_set = 0
        self._warned_uneven = False

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the shuffling of ``epoch``; later passes count on from it."""
        self._epoch = epoch
        self._passes_since_set = 0

    def __iter__(self) -> Iterator[dict]:
        epoch = self._epoch + self._passes_since_set
        self._passes_since_set += 1
        urls = list(self.urls)
        if not urls:
            return iter(())  # webdataset cannot open an empty shard list
        if self.shuffle:
            random.Random(f"shards-{self.seed}-{epoch}").shuffle(urls)
        rank, world_size, worker, _ = wds.utils.pytorch_worker_info()
        uneven = self.split_nodes and world_size > 1 and len(urls) % world_size != 0
        if uneven and worker == 0 and not self._warned_uneven:
            self._warned_uneven = True
            logger.warning(
                "%d shards do not divide evenly among %d nodes: ranks will see different numbers of "
                "batches per epoch",
                len(urls),
                world_size,
            )
        pipeline = wds.WebDataset(
            urls,
            shardshuffle=False,  # done above, before the shards are split among nodes and workers
            nodesplitter=wds.split_by_node if self.split_nodes else None,
            workersplitter=wds.split_by_worker,
            empty_check=False,  # a worker left without a shard yields nothing instead of raising
            seed=self.seed,  # unused here, but without it WebDataset draws one from the global RNG
        )
        if self.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(f"samples-{self.seed}-{epoch}-{rank}-{worker}")
            pipeline = pipeline.shuffle(self.shuffle_buffer, rng=rng)
        pipeline = pipeline.map(functools.partial(decode_sample, resolution=self.resolution))
        return iter(pipeline)


def shard_dataset(
    urls: list[str],
    *,
    resolution: int,
    shuffle: bool,
    shuffle_buffer: int,
    seed: int,
    split_nodes: bool = True,
) -> ShardStream:
    """The samples of webdataset shards as ``{"image": 3xHxW in [-1, 1], "caption", "key"}`` dicts."""
    return ShardStream(
        urls,
        resolution=resolution,
        shuffle=shuffle,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        split_nodes=split_nodes,
    )


class ShardDataModule(pl.LightningDataModule):
    """Training and validation batches streamed from webdataset shards.

    Batches are ``{"image": B x 3 x H x W in [-1, 1], "caption": list[str], "key": list[str]}``.
    The training stream is one pass over its shards per epoch, shuffled differently (and
    reproducibly) each epoch; validation is read in shard order, the same every time.
    """

    def __init__(
        self,
        train_urls: list[str],
        val_urls: list[str],
        *,
        batch_size: int,
        resolution: int,
        num_workers: int,
        shuffle_buffer: int,
        seed: int,
    ):
        super().__init__()
        if not train_urls:
            raise ValueError("no training shards were given")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be non-negative, got {num_workers}")
        self.train_urls = list(train_urls)
        self.val_urls = list(val_urls)
        self.batch_size = batch_size
        self.resolution = resolution
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.train_dataset = shard_dataset(
            self.train_urls, resolution=resolution, shuffle=True, shuffle_buffer=shuffle_buffer, seed=seed
        )
        # Every rank validates on all of the validation shards: there are often fewer than ranks.
        self.val_dataset = shard_dataset(
            self.val_urls,
            resolution=resolution,
            shuffle=False,
            shuffle_buffer=0,
            seed=seed,
            split_nodes=False,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the last incomplete batch of each worker's pass is dropped."""
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            # Persistent workers keep their dataset copies, whose pass counter sets each epoch's shuffle.
            persistent_workers=self.num_workers > 0,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation batches in shard order, read in the main process, the same on every call."""
        return DataLoader(self.val_dataset, batch_size=self.batch_size, num_workers=0, drop_last=False)


def build_datamodule(cfg: DataConfig) -> ShardDataModule:
    """The data module of a data config; the shapes set is generated on first use."""
    if cfg.name != "shapes":
        raise ValueError(f"unknown data set '{cfg.name}'; available: shapes")
    from ldm.data.shapes import ensure_shapes_dataset

    shards = ensure_shapes_dataset(cfg)
    return ShardDataModule(
        shards.train,
        shards.val,
        batch_size=cfg.batch_size,
        resolution=cfg.resolution,
        num_workers=cfg.num_workers,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
    )
