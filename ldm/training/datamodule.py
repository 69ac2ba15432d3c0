"""The DataModule of both stages: shard streams (``ldm.data``) served to Lightning.

Builds the training and validation ``ShardStream``s of a data config, batches them
(``ldm.data.collate``), converts images to the model's range on the device, and saves the
training stream's position and read/skip counts in checkpoints, so that a resumed fit continues
the stream where it stopped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ldm.data.collate import collate_samples
from ldm.data.decode import ImageDecoder, model_inputs
from ldm.data.latents import latent_decoders
from ldm.data.quality import COLUMNS, SampleFilter
from ldm.data.shards import shard_urls
from ldm.data.stream import POSITION_KEY, ShardStream, StreamPosition
from ldm.data.urls import expand_sources, mixture_weights

if TYPE_CHECKING:
    from ldm.config import DataConfig

logger = logging.getLogger(__name__)


class ShardDataModule(pl.LightningDataModule):
    """Training and validation batches streamed from webdataset shards.

    Batches are ``{"image": B x 3 x H x W, "caption": list[str], "key": list[str], "original_size",
    "crop_coords": B x 2}`` (or what ``decoders`` yield, for cached latents). Images leave the
    loaders as uint8 in channels-last memory (``ldm.data.collate``) and reach the model as contiguous
    float in [-1, 1] (``on_after_batch_transfer``); code
    that iterates the loaders itself converts with ``ldm.data.decode.model_inputs``.
    ``train_counter`` counts what the training stream read and skipped (ldm.data.quality). The
    training stream is one pass over its shards per epoch, shuffled differently (and reproducibly)
    each epoch, with random crops and flips when asked; validation is read in shard order with
    centre crops, the same every time.

    The training stream's position (``StreamPosition``) and the read/skip counts are saved in
    checkpoints (``state_dict``); a fit resumed from one continues the stream where it stopped.
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
        jpeg_draft: bool = True,
        decoders: Optional[tuple[Any, Any]] = None,
        url_weights: Optional[list[float]] = None,
        prefetch_factor: int = 2,
        pin_memory: bool = True,
    ):
        super().__init__()
        if not train_urls:
            raise ValueError("no training shards were given")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be non-negative, got {num_workers}")
        if prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be at least 1, got {prefetch_factor}")
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.train_urls = list(train_urls)
        self.val_urls = list(val_urls)
        self.batch_size = batch_size
        self.resolution = resolution
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        if decoders is None:
            common = dict(resolution=resolution, caption_key=caption_key, sample_filter=sample_filter)
            common.update(jpeg_draft=jpeg_draft, uint8=True)  # converted to float on the device
            train_decoder = ImageDecoder(crop=crop, flip=flip, **common)
            val_decoder = ImageDecoder(**common)
        else:
            train_decoder, val_decoder = decoders
        self.train_dataset = ShardStream(
            self.train_urls,
            decoder=train_decoder,
            shuffle=True,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            resampled=resampled,
            batches_per_epoch=batches_per_epoch,
            url_weights=url_weights,
        )
        self.train_counter = self.train_dataset.counter
        # Every rank validates on all of the validation shards: there are often fewer than ranks.
        self.val_dataset = ShardStream(
            self.val_urls, decoder=val_decoder, shuffle=False, shuffle_buffer=0, seed=seed, split_nodes=False
        )
        self.position = StreamPosition(num_workers)
        self.resuming = False
        """True from a restore until the end of the first epoch after it (which may hold no batch)."""
        self._restored: Optional[dict[str, Any]] = None

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the last incomplete batch of each worker's pass is dropped.

        A fit restored from a checkpoint continues the saved stream; any other starts at pass 0.
        """
        self.train_dataset.batch_size = self.batch_size  # resampled mode yields whole batches
        world_size = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        log_rank_shards(self.train_dataset, rank, world_size, self.num_workers)
        restored, self._restored = self._restored, None
        self.resuming = restored is not None
        counts = restored.get("counts", {}) if restored else {}
        self.position = StreamPosition(self.num_workers, world_size, base=counts)
        self.train_counter.add(counts)
        if restored is not None and restored.get("stream") is not None:
            stream = restored["stream"]
            self.train_dataset.resume(stream, num_workers=self.num_workers, world_size=world_size)
        else:
            self.train_dataset.set_epoch(0)
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            # Persistent workers keep their dataset copies, whose pass counter sets each epoch's shuffle.
            persistent_workers=self.num_workers > 0,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            pin_memory=self.pins_memory(),
            drop_last=True,
            collate_fn=collate_samples,
        )

    def pins_memory(self) -> bool:
        """Whether training batches go to page-locked memory: asked for, and the model is on a CUDA device."""
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        return self.pin_memory and device is not None and device.type == "cuda"

    def val_dataloader(self) -> DataLoader:
        """Validation batches in shard order, read in the main process, the same on every call."""
        return DataLoader(
            self.val_dataset,
            batch_size=self.batch_size,
            num_workers=0,
            drop_last=False,
            collate_fn=collate_samples,
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record where the training stream stands after each batch the model is given."""
        if isinstance(batch, dict) and POSITION_KEY in batch:
            batch = dict(batch)
            rows = batch.pop(POSITION_KEY)
            if self.trainer is not None and self.trainer.training:
                self.position.update(rows)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 images -> float in [-1, 1], on the device (cheap there; 4x less to move)."""
        return model_inputs(batch) if isinstance(batch, dict) else batch

    def state_dict(self) -> dict[str, Any]:
        """The training stream's position on every rank, and its read/skip counts up to there (plain types)."""
        state = {"stream": self.position.state_dict(), "counts": self.position.counts(COLUMNS)}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)  # every rank dumps the checkpoint
            return {"ranks": states}
        return {"ranks": [state]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Make the next ``train_dataloader`` continue the saved stream of this rank."""
        ranks = state_dict.get("ranks", [])
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank >= len(ranks):
            logger.warning(
                "the checkpoint holds the data stream of %d rank(s), not of rank %d: its stream starts afresh",
                len(ranks),
                rank,
            )
            return
        self._restored = ranks[rank]


def build_datamodule(cfg: DataConfig) -> ShardDataModule:
    """The data module of a data config: the built-in shapes set (generated on first use) or shards."""
    if cfg.cached_latents and cfg.name != "webdataset":
        raise ValueError(
            "data.cached_latents=true reads latent shards: use data=webdataset data.train_shards=..."
        )
    train, val = shard_urls(cfg)
    decoders = latent_decoders(cfg, train) if cfg.cached_latents else None
    url_weights = None
    if cfg.train_weights is not None:
        if cfg.name != "webdataset":
            raise ValueError("data.train_weights mixes the sources of data.train_shards: use data=webdataset")
        url_weights = mixture_weights(expand_sources(cfg.train_shards), cfg.train_weights)
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
        jpeg_draft=cfg.jpeg_draft,
        decoders=decoders,
        url_weights=url_weights,
        prefetch_factor=cfg.prefetch_factor,
        pin_memory=cfg.pin_memory,
    )


def log_rank_shards(stream: ShardStream, rank: int, world_size: int, num_workers: int) -> None:
    """One line per rank: the world size and which training shards this rank reads."""
    urls = stream.urls if stream.resampled or not stream.split_nodes else stream.urls[rank::world_size]
    how = "drawn with replacement from" if stream.resampled else "split over"
    logger.info(
        "rank %d of %d: %d training shards (%s ... %s) %s %d DataLoader worker(s)",
        rank,
        world_size,
        len(urls),
        urls[0] if urls else "-",
        urls[-1] if urls else "-",
        how,
        max(1, num_workers),
    )
