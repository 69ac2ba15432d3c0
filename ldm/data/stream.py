"""ShardStream: the samples of webdataset shards, split by node and worker, shuffled, resumable.

Each iteration of a ``ShardStream`` is one pass (epoch) over its shards. With shuffling, pass ``e``
permutes the shard list with a generator seeded by ``(seed, e)`` (the same on every node and
worker, so the split stays a partition) and shuffles samples in a buffer seeded by
``(seed, e, rank, worker)``: runs are reproducible. A decoder (``ldm.data.decode.ImageDecoder``, or
the latent decoder of cached latents) turns raw samples into training samples.

Every sample carries its ``stream_position``: ``[pass, worker, raw samples consumed, samples
yielded]`` of the worker that produced it, and that worker's read/skip counts so far. The data module keeps the position of the last batch
the model consumed (``StreamPosition``) and saves it in checkpoints; a resumed stream replays the
same pass and drops, per worker, the raw samples already consumed before decoding anything, so it
continues exactly where the interrupted run stopped.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from ldm.data.quality import DataQualityError, SampleCounter
from ldm.data.tar_reader import read_shards

logger = logging.getLogger(__name__)

POSITION_KEY = "stream_position"
"""Batch key of the [pass, worker, raw consumed, yielded, counter row, *counts] rows of the samples.

The counts are the producing process's SampleCounter row when the sample was yielded: what was
read and skipped up to it, so that checkpoints count what the model consumed, not what was prefetched."""

Decoder = Callable[..., Iterator[dict]]
"""decoder(raw_samples, *, counter, augment_seed) -> training samples; pulls raw samples lazily."""


class ShardStream(IterableDataset):
    """An iterable over decoded samples of webdataset shards, split by node and by DataLoader worker.

    The pass number counts the iterations of this copy of the dataset (in a persistent DataLoader
    worker, the epochs) and can be pinned with ``set_epoch`` or ``resume``. With
    ``split_nodes=False`` every node reads all shards (used for validation, so that no rank is left
    without batches).

    With ``resampled``, shards are not split: every worker of every rank draws shards with
    replacement (seeded by ``(seed, e, rank, worker)``) and yields exactly its share of
    ``batches_per_epoch * batch_size`` samples, so every rank gets the same number of batches per
    epoch (uneven batch counts hang DDP) whatever the shard count. ``url_weights`` (resampled only)
    draw shard i with probability proportional to ``url_weights[i]``: how sources are mixed.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        decoder: Decoder,
        shuffle: bool,
        shuffle_buffer: int,
        seed: int,
        split_nodes: bool = True,
        resampled: bool = False,
        batches_per_epoch: Optional[int] = None,
        batch_size: Optional[int] = None,
        url_weights: Optional[list[float]] = None,
    ):
        super().__init__()
        if url_weights is not None and not resampled:
            raise ValueError(
                "weighted sources need resampled mode (data.resampled=true): a pass reads every shard once"
            )
        if url_weights is not None and len(url_weights) != len(urls):
            raise ValueError(f"{len(url_weights)} URL weights for {len(urls)} URLs")
        if resampled and (batches_per_epoch or 0) < 1:
            raise ValueError(f"resampled mode needs batches_per_epoch >= 1, got {batches_per_epoch}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be non-negative, got {shuffle_buffer}")
        self.urls = list(urls)
        self.decoder = decoder
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.split_nodes = split_nodes
        self.resampled = resampled
        self.batches_per_epoch = batches_per_epoch
        self.batch_size = batch_size
        self.url_weights = url_weights
        self.counter = SampleCounter()  # shared with the DataLoader workers
        self._epoch = 0
        self._passes_since_set = 0
        self._resume: Optional[dict[str, Any]] = None
        self._warned_uneven = False
        self._named_shards: set[str] = set()  # broken shards this process has warned about

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use the shuffling of ``epoch``; later passes count on from it."""
        self._epoch = epoch
        self._passes_since_set = 0
        self._resume = None

    def resume(self, state: dict[str, Any], *, num_workers: int, world_size: int) -> None:
        """Continue from a ``StreamPosition.state_dict()``: the next pass is the saved pass, minus what was consumed.

        The position is per worker and rank: with another worker count or world size, the saved
        pass restarts from its beginning (with a warning) instead.
        """
        self.set_epoch(int(state["epoch"]))
        if (state["num_workers"], state["world_size"]) != (max(1, num_workers), world_size):
            logger.warning(
                "the checkpoint's data stream was read by %d worker(s) on %d rank(s), this run has %d on %d: "
                "pass %d restarts from its beginning instead of continuing where it stopped",
                state["num_workers"], state["world_size"], max(1, num_workers), world_size, state["epoch"],
            )  # fmt: skip
            return
        self._resume = state

    def _resume_offsets(
        self, epoch: int, worker: int, num_workers: int, world_size: int
    ) -> tuple[int, int, int]:
        """(logical worker, raw samples to drop, samples already yielded) of this worker's pass.

        The DataLoader hands out batches round-robin starting at worker 0. A resumed pass must start
        at the worker whose batch was due next, so DataLoader worker i then plays worker
        (i + next) % num_workers: its shards, its shuffle and its position.
        """
        state, self._resume = self._resume, None  # only the first pass after a resume is partial
        if state is None or int(state["epoch"]) != epoch:
            return worker, 0, 0
        if (state["num_workers"], state["world_size"]) != (num_workers, world_size):
            return worker, 0, 0  # resume() warned
        worker = (worker + int(state["last_worker"]) + 1) % num_workers
        raw, yielded = state["workers"].get(str(worker), (0, 0))
        return worker, int(raw), int(yielded)

    def __iter__(self) -> Iterator[dict]:
        epoch = self._epoch + self._passes_since_set
        self._passes_since_set += 1
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        worker, skip, yielded = self._resume_offsets(epoch, worker, num_workers, world_size)
        if not self.urls:
            return iter(())
        sample_rng = random.Random(f"samples-{self.seed}-{epoch}-{rank}-{worker}")
        progress = _Progress()
        if self.resampled:
            quota = self.worker_quota(worker, num_workers)
            draw_rng = random.Random(f"resample-{self.seed}-{epoch}-{rank}-{worker}")
            raw = self._shuffled(self._draw_shards(draw_rng, progress), sample_rng)
        else:
            quota = None
            urls = list(self.urls)
            if self.shuffle:
                random.Random(f"shards-{self.seed}-{epoch}").shuffle(urls)
            self._warn_uneven(len(urls), world_size, worker)
            if self.split_nodes:
                urls = urls[rank::world_size]
            raw = self._shuffled(self._read(urls[worker::num_workers]), sample_rng)
        augment_seed = f"augment-{self.seed}-{epoch}" if self.shuffle else None
        decoded = self.decoder(progress.count(raw, skip), counter=self.counter, augment_seed=augment_seed)
        return self._positioned(decoded, progress, epoch, worker, yielded, quota)

    def _positioned(
        self,
        decoded: Iterator[dict],
        progress: _Progress,
        epoch: int,
        worker: int,
        yielded: int,
        quota: Optional[int],
    ) -> Iterator[dict]:
        if quota is not None and yielded >= quota:
            return
        for sample in decoded:
            yielded += 1
            progress.shards_since_yield = progress.raw_since_yield = 0
            position = [epoch, worker, progress.raw, yielded, *self.counter.snapshot()]
            sample[POSITION_KEY] = torch.tensor(position)
            yield sample
            if quota is not None and yielded >= quota:
                return

    def _warn_uneven(self, n_urls: int, world_size: int, worker: int) -> None:
        uneven = self.split_nodes and world_size > 1 and n_urls % world_size != 0
        if uneven and worker == 0 and not self._warned_uneven:
            self._warned_uneven = True
            logger.warning(
                "%d shards do not divide evenly among %d nodes: ranks will see different numbers of "
                "batches per epoch (use data.resampled=true for multi-node runs)",
                n_urls,
                world_size,
            )

    def worker_quota(self, worker: int, num_workers: int) -> int:
        """Resampled mode: samples this worker yields per epoch, so the rank yields batches_per_epoch batches."""
        if self.batches_per_epoch is None or self.batch_size is None:
            raise ValueError("resampled mode needs batches_per_epoch and batch_size")
        batches = self.batches_per_epoch // num_workers + (worker < self.batches_per_epoch % num_workers)
        return batches * self.batch_size

    def _read(self, urls: list[str]) -> Iterator[dict]:
        """Raw samples of `urls` in order; broken shards (truncated ones included) are skipped and counted.

        The samples of a shard before the point where it breaks are kept. Each broken shard is
        counted once per read and named in a warning once per process.
        """
        broken: set[str] = set()

        def skip_unreadable(exn: Exception) -> bool:
            # a shard can be reported at more than one stage: count each shard once.
            shard = next((u for u in urls if u in str(exn)), None)
            detail = f"{type(exn).__name__}: {exn}"
            if shard is None:
                self.counter.skip("unreadable_shard", detail)
            elif shard not in broken:
                broken.add(shard)
                self.counter.skip("unreadable_shard", detail, quiet=True)  # named below, once per process
                if shard not in self._named_shards:
                    self._named_shards.add(shard)
                    logger.warning("lost the rest of shard %s (unreadable_shard): %s", shard, detail)
            return True  # go on with the next shard

        return read_shards(urls, skip_unreadable)

    def _shuffled(self, raw: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        if not self.shuffle or self.shuffle_buffer <= 1:
            return raw
        return wds.filters.shuffle(self.shuffle_buffer, rng=rng)(raw)

    def _draw_shards(self, rng: random.Random, progress: _Progress) -> Iterator[dict]:
        """Resampled mode: raw samples of shards drawn with replacement, forever.

        Raises when many shards in a row gave no usable sample (at least max(20, 2 x shards) of them,
        and more raw samples than the shuffle buffer holds, so that filling the buffer is not mistaken
        for broken data): the shards are broken, and the stream would otherwise never yield.
        """
        limit = max(20, 2 * len(self.urls))
        while True:
            if progress.shards_since_yield >= limit and progress.raw_since_yield >= self.shuffle_buffer:
                raise DataQualityError(
                    f"no usable sample in the last {progress.shards_since_yield} shards drawn: check the shards"
                )
            progress.shards_since_yield += 1
            if self.url_weights is None:
                url = rng.choice(self.urls)
            else:
                url = rng.choices(self.urls, weights=self.url_weights)[0]
            for sample in self._read([url]):
                progress.raw_since_yield += 1
                yield sample


class _Progress:
    """Counts of one worker's pass: raw samples handed to the decoder, and the resampling guard's tallies."""

    def __init__(self) -> None:
        self.raw = 0
        self.shards_since_yield = 0
        self.raw_since_yield = 0

    def count(self, raw: Iterator[dict], skip: int) -> Iterator[dict]:
        """`raw` without its first `skip` samples (dropped undecoded), counting what passes."""
        self.raw = skip
        for sample in itertools.islice(raw, skip, None):
            self.raw += 1
            yield sample


class StreamPosition:
    """The training stream's position on this rank after the last batch the model consumed.

    ``update`` takes each training batch's ``stream_position`` rows; ``state_dict`` is what
    ``ShardStream.resume`` takes. ``counts`` are the read/skip counts up to the consumed samples
    (``base``, a resumed run's earlier counts, plus each producing process's last snapshot).
    """

    def __init__(self, num_workers: int, world_size: int = 1, base: Optional[dict[str, int]] = None):
        self.num_workers = max(1, num_workers)
        self.world_size = world_size
        self.epoch: Optional[int] = None
        self.workers: dict[str, list[int]] = {}
        self.last_worker = -1
        self.base = dict(base or {})
        self._snapshots: dict[int, list[int]] = {}

    def update(self, rows: torch.Tensor) -> None:
        """Record a batch's positions (all rows of a batch come from one worker's pass)."""
        last = rows[rows[:, 2].argmax()].tolist()
        epoch, worker, raw, yielded, counter_row = (int(v) for v in last[:5])
        if self.epoch is None or epoch > self.epoch:
            self.epoch, self.workers = epoch, {}
        self.workers[str(worker)] = [raw, yielded]
        self.last_worker = worker
        self._snapshots[counter_row] = [int(v) for v in last[5:]]

    def counts(self, columns: tuple[str, ...]) -> dict[str, int]:
        """Read/skip counts up to the consumed samples, by kind."""
        totals = [sum(values) for values in zip(*self._snapshots.values())] or [0] * len(columns)
        return {k: self.base.get(k, 0) + n for k, n in zip(columns, totals)}

    def state_dict(self) -> Optional[dict[str, Any]]:
        """Plain types only (checkpoints load with weights_only=True); None before the first batch."""
        if self.epoch is None:
            return None
        return {
            "epoch": self.epoch,
            "workers": {k: list(v) for k, v in self.workers.items()},
            "last_worker": self.last_worker,
            "num_workers": self.num_workers,
            "world_size": self.world_size,
        }
