"""The webdataset streaming pipeline: tar shards of image + caption -> batches of tensors.

Shards hold ``KEY.png`` / ``KEY.jpg`` (or jpeg, webp) images, ``KEY.txt`` captions and ``KEY.json``
metadata, as written by img2dataset for LAION and by ``ldm.data.shapes``. Each pass over a
``ShardStream`` reads every shard once; with shuffling, the shard order and the sample shuffle
buffer are seeded from the seed and the pass (epoch) number, so runs are reproducible.
"""

from __future__ import annotations

import functools
import io
import json
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

from ldm.data.quality import DataQualityError, SampleCounter, SampleFilter
from ldm.data.urls import expand_urls

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


CROPS = ("center", "random")


def resize_and_crop(
    image: Image.Image, resolution: int, rng: random.Random | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Resize the short side to ``resolution`` (antialiased bicubic) and crop a square.

    The crop is centred, or uniformly placed when an ``rng`` is given; returns the crop and its
    (top, left) corner in the resized image (what SDXL-style crop conditioning uses).
    """
    width, height = image.size
    if (width, height) == (resolution, resolution):
        return image, (0, 0)
    scale = resolution / min(width, height)
    new_width = max(resolution, round(width * scale))
    new_height = max(resolution, round(height * scale))
    image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    if rng is None:
        left, top = (new_width - resolution) // 2, (new_height - resolution) // 2
    else:
        left, top = rng.randint(0, new_width - resolution), rng.randint(0, new_height - resolution)
    return image.crop((left, top, left + resolution, top + resolution)), (top, left)


def resize_and_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to ``resolution`` (antialiased bicubic) and crop the centre square."""
    return resize_and_crop(image, resolution)[0]


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a float32 tensor 3xHxW with values in [-1, 1] (0 -> -1, 255 -> 1)."""
    array = np.asarray(image, dtype=np.uint8)  # h w c
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def decode_stream(
    samples: Iterator[dict],
    *,
    counter: SampleCounter,
    resolution: int,
    caption_key: str = "txt",
    rng: random.Random | None = None,
    flip: bool = False,
    sample_filter: SampleFilter | None = None,
) -> Iterator[dict]:
    """Decode raw samples, skipping (and counting in ``counter``) every one that cannot be used.

    Yields ``{"image", "caption", "key", "original_size" [h, w], "crop_coords" [top, left]}``.
    ``rng`` (given for training) places crops at random and draws flips when ``flip``.
    """
    for sample in samples:
        where = f"sample '{sample.get('__key__')}' in {sample.get('__url__')}"
        extension = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if extension is None:
            counter.skip("missing_image", f"{where} has no {'/'.join(IMAGE_EXTENSIONS)} member")
            continue
        if caption_key not in sample:
            counter.skip("missing_caption", f"{where} has no '{caption_key}' member")
            continue
        try:
            caption = sample[caption_key].decode("utf-8").strip()
        except UnicodeDecodeError:
            counter.skip("bad_text", f"{where}: caption is not UTF-8")
            continue
        if sample_filter is not None:
            meta: dict = {}
            if sample_filter.needs_metadata:
                try:
                    meta = json.loads(sample["json"])
                except (KeyError, ValueError) as e:
                    counter.skip("bad_metadata", f"{where}: no readable json metadata ({type(e).__name__})")
                    continue
            if not sample_filter.keep(meta, caption):
                counter.skip("filtered", where)
                continue
        try:
            with Image.open(io.BytesIO(sample[extension])) as opened:
                image = to_rgb(opened)
                image.load()
        except Exception as e:  # PIL raises many kinds for broken files
            counter.skip("unreadable_image", f"{where}: {type(e).__name__}: {e}")
            continue
        original_size = (image.height, image.width)
        image, crop_coords = resize_and_crop(image, resolution, rng)
        if flip and rng is not None and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        counter.read()
        yield {
            "image": image_to_tensor(image),
            "caption": caption,
            "key": sample["__key__"],
            "original_size": torch.tensor(original_size),
            "crop_coords": torch.tensor(crop_coords),
        }


class ShardStream(IterableDataset):
    """An iterable over the samples of webdataset shards, split by node and by DataLoader worker.

    Each iteration is one pass over the shards. With ``shuffle``, pass ``e`` permutes the shard list
    with a generator seeded by ``(seed, e)`` (the same on every node and worker, so the split stays a
    partition), and shuffles samples in a buffer seeded by ``(seed, e, rank, worker)``. The pass number
    counts the iterations of this copy of the dataset (in a persistent DataLoader worker, the epochs)
    and can be pinned with ``set_epoch``. With ``split_nodes=False`` every node reads all shards
    (used for validation, so that no rank is left without batches).

    With ``resampled``, shards are not split: every worker of every rank draws shards with
    replacement (seeded by ``(seed, e, rank, worker)``) and yields exactly its share of
    ``batches_per_epoch * batch_size`` samples, so every rank gets the same number of batches per
    epoch (uneven batch counts hang DDP) whatever the shard count.
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
        caption_key: str = "txt",
        crop: str = "center",
        flip: bool = False,
        sample_filter: SampleFilter | None = None,
        resampled: bool = False,
        batches_per_epoch: int | None = None,
        batch_size: int | None = None,
    ):
        super().__init__()
        if resampled and (batches_per_epoch or 0) < 1:
            raise ValueError(f"resampled mode needs batches_per_epoch >= 1, got {batches_per_epoch}")
        if crop not in CROPS:
            raise ValueError(f"unknown crop '{crop}'; available: {', '.join(CROPS)}")
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
        self.caption_key = caption_key
        self.crop = crop
        self.flip = flip
        self.sample_filter = sample_filter
        self.resampled = resampled
        self.batches_per_epoch = batches_per_epoch
        self.batch_size = batch_size
        self.counter = SampleCounter()  # shared with the DataLoader workers
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
        if not self.urls:
            return iter(())  # webdataset cannot open an empty shard list
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        augment = self.shuffle and (self.crop == "random" or self.flip)
        decode = functools.partial(
            decode_stream,
            counter=self.counter,
            resolution=self.resolution,
            caption_key=self.caption_key,
            rng=random.Random(f"augment-{self.seed}-{epoch}-{rank}-{worker}") if augment else None,
            flip=self.flip,
            sample_filter=self.sample_filter,
        )
        sample_rng = random.Random(f"samples-{self.seed}-{epoch}-{rank}-{worker}")
        if self.resampled:
            quota = self.worker_quota(worker, num_workers)
            return self._resample(
                random.Random(f"resample-{self.seed}-{epoch}-{rank}-{worker}"), quota, decode
            )
        urls = list(self.urls)
        if self.shuffle:
            random.Random(f"shards-{self.seed}-{epoch}").shuffle(urls)
        uneven = self.split_nodes and world_size > 1 and len(urls) % world_size != 0
        if uneven and worker == 0 and not self._warned_uneven:
            self._warned_uneven = True
            logger.warning(
                "%d shards do not divide evenly among %d nodes: ranks will see different numbers of "
                "batches per epoch (use data.resampled=true for multi-node runs)",
                len(urls),
                world_size,
            )
        return iter(decode(self._read(urls, split=True, rng=sample_rng)))

    def worker_quota(self, worker: int, num_workers: int) -> int:
        """Resampled mode: samples this worker yields per epoch, so the rank yields batches_per_epoch batches."""
        if self.batches_per_epoch is None or self.batch_size is None:
            raise ValueError("resampled mode needs batches_per_epoch and batch_size")
        batches = self.batches_per_epoch // num_workers + (worker < self.batches_per_epoch % num_workers)
        return batches * self.batch_size

    def _read(self, urls: list[str], *, split: bool, rng: random.Random) -> Iterator[dict]:
        """Raw samples of `urls` (split by node and worker when `split`), through the shuffle buffer."""
        broken: set[str] = set()

        def skip_unreadable(exn: Exception) -> bool:
            # webdataset reports one broken shard at more than one level: count each shard once.
            shard = next((u for u in urls if u in str(exn)), None)
            if shard is None or shard not in broken:
                broken.add(shard or "")
                self.counter.skip("unreadable_shard", f"{type(exn).__name__}: {exn}")
            return True  # go on with the next shard

        pipeline = wds.WebDataset(
            urls,
            handler=skip_unreadable,
            shardshuffle=False,  # done by the caller, before the shards are split among nodes and workers
            nodesplitter=wds.split_by_node if split and self.split_nodes else None,
            workersplitter=wds.split_by_worker if split else None,
            empty_check=False,  # a worker left without a shard yields nothing instead of raising
            seed=self.seed,  # unused here, but without it WebDataset draws one from the global RNG
        )
        if self.shuffle and self.shuffle_buffer > 1:
            pipeline = pipeline.shuffle(self.shuffle_buffer, rng=rng)
        return iter(pipeline)

    def _resample(self, rng: random.Random, quota: int, decode) -> Iterator[dict]:
        """Draw shards with replacement until `quota` samples were yielded."""
        yielded, fruitless = 0, 0
        while yielded < quota:
            got = 0
            for sample in decode(self._read([rng.choice(self.urls)], split=False, rng=rng)):
                yield sample
                yielded, got = yielded + 1, got + 1
                if yielded >= quota:
                    return
            fruitless = 0 if got else fruitless + 1
            if fruitless >= max(20, 2 * len(self.urls)):
                raise DataQualityError(
                    f"no usable sample in the last {fruitless} shards drawn: check the shards"
                )


def shard_dataset(urls: list[str], **options) -> ShardStream:
    """The samples of webdataset shards as dicts (see ``decode_stream``); options as ShardStream's."""
    return ShardStream(urls, **options)


class ShardDataModule(pl.LightningDataModule):
    """Training and validation batches streamed from webdataset shards.

    Batches are ``{"image": B x 3 x H x W in [-1, 1], "caption": list[str], "key": list[str],
    "original_size", "crop_coords": B x 2}``; ``train_counter`` counts what the training stream read
    and skipped (ldm.data.quality). The training stream is
    one pass over its shards per epoch, shuffled differently (and reproducibly) each epoch, with
    random crops and flips when asked; validation is read in shard order with centre crops, the
    same every time.
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
        caption_key: str = "txt",
        crop: str = "center",
        flip: bool = False,
        sample_filter: SampleFilter | None = None,
        resampled: bool = False,
        batches_per_epoch: int | None = None,
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
        common = dict(resolution=resolution, seed=seed, caption_key=caption_key, sample_filter=sample_filter)
        self.train_dataset = shard_dataset(
            self.train_urls,
            shuffle=True,
            shuffle_buffer=shuffle_buffer,
            crop=crop,
            flip=flip,
            resampled=resampled,
            batches_per_epoch=batches_per_epoch,
            **common,
        )
        self.train_counter = self.train_dataset.counter
        # Every rank validates on all of the validation shards: there are often fewer than ranks.
        self.val_dataset = shard_dataset(
            self.val_urls, shuffle=False, shuffle_buffer=0, split_nodes=False, **common
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the last incomplete batch of each worker's pass is dropped."""
        self.train_dataset.batch_size = self.batch_size  # resampled mode yields whole batches
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


DATA_SETS = ("shapes", "webdataset")


def build_datamodule(cfg: DataConfig) -> ShardDataModule:
    """The data module of a data config: the built-in shapes set (generated on first use) or shards."""
    if cfg.name == "shapes":
        from ldm.data.shapes import ensure_shapes_dataset

        shards = ensure_shapes_dataset(cfg)
        train, val = shards.train, shards.val
    elif cfg.name == "webdataset":
        if not cfg.train_shards:
            raise ValueError(
                "data=webdataset needs data.train_shards (a brace pattern, list or @file of URLs)"
            )
        train = expand_urls(cfg.train_shards)
        val = expand_urls(cfg.val_shards) if cfg.val_shards else []
    else:
        raise ValueError(f"unknown data set '{cfg.name}'; available: {', '.join(DATA_SETS)}")
    return ShardDataModule(
        train,
        val,
        batch_size=cfg.batch_size,
        resolution=cfg.resolution,
        num_workers=cfg.num_workers,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
        caption_key=cfg.caption_key,
        crop=cfg.crop,
        flip=cfg.flip,
        sample_filter=SampleFilter(cfg.filters) if SampleFilter(cfg.filters).active else None,
        resampled=cfg.resampled,
        batches_per_epoch=cfg.batches_per_epoch if cfg.resampled else None,
    )
