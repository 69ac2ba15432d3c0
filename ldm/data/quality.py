"""Data quality: metadata filters, and corrupt samples skipped, counted by kind, and reported.

Broken data must never stop or hang training. The reader skips a sample it cannot use and counts
why in a ``SampleCounter``: a small table in shared memory with one row per DataLoader worker, so
the main process reads exact totals whatever the batching (a dropped last batch, the end of a pass)
without any message passing. The training layer's ``DataQualityCallback``
(``ldm.training.callbacks``) logs the totals as metrics, reports them at the end of a run, and
stops the run with a clear message when the corrupt fraction exceeds a ceiling (the data is
mostly broken).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Optional

import torch

from ldm.config import DataFiltersConfig

log = logging.getLogger(__name__)

SKIP_KINDS = (
    "unreadable_image",  # the image bytes do not decode
    "missing_image",  # no png/jpg/jpeg/webp member
    "missing_caption",  # no caption member
    "bad_text",  # caption not UTF-8
    "bad_metadata",  # json unreadable while filters need it
    "unreadable_shard",  # a tar shard (or member) that cannot be read, or is truncated: the rest is lost
    "filtered",  # a readable sample that the metadata filters reject (not corruption)
)
CORRUPT_KINDS = tuple(k for k in SKIP_KINDS if k != "filtered")


class DataQualityError(ValueError):
    """The data is too broken to train on."""


class SampleFilter:
    """Keeps a sample only if its json metadata and caption pass every bound set in the config.

    A bound that needs a metadata value the sample does not have rejects the sample.
    """

    def __init__(self, config: DataFiltersConfig):
        self.config = config

    @property
    def needs_metadata(self) -> bool:
        c = self.config
        bounds = (c.min_width, c.min_height, c.min_aspect, c.max_aspect, c.min_aesthetic)
        return any(v is not None for v in bounds + (c.max_watermark, c.max_unsafe))

    @property
    def active(self) -> bool:
        return any(v is not None for v in dataclasses.asdict(self.config).values())

    def keep(self, meta: dict[str, Any], caption: str) -> bool:
        """True when the sample passes every bound."""

        def value(*keys: str) -> Optional[float]:
            for key in keys:
                if meta.get(key) is not None:
                    return float(meta[key])
            return None

        c = self.config
        width, height = value("original_width", "width"), value("original_height", "height")
        aspect = width / height if width and height else None
        lower = [
            (c.min_width, width),
            (c.min_height, height),
            (c.min_aspect, aspect),
            (c.min_aesthetic, value("aesthetic", "AESTHETIC_SCORE")),
            (c.min_caption_length, len(caption)),
        ]
        upper = [
            (c.max_aspect, aspect),
            (c.max_watermark, value("pwatermark")),
            (c.max_unsafe, value("punsafe")),
            (c.max_caption_length, len(caption)),
        ]
        for bound, v in lower:
            if bound is not None and (v is None or math.isnan(v) or v < bound):
                return False
        for bound, v in upper:
            if bound is not None and (v is None or math.isnan(v) or v > bound):
                return False
        return True


MAX_WORKERS = 64
COLUMNS = (*SKIP_KINDS, "read")


class SampleCounter:
    """Counts of samples read and skipped (per kind), shared between the DataLoader workers.

    Row 0 is the main process, row w + 1 DataLoader worker w; each writes only its own row. The
    table lives in shared memory, so it must be created before the workers start.
    """

    def __init__(self) -> None:
        self.table = torch.zeros(MAX_WORKERS + 1, len(COLUMNS), dtype=torch.int64).share_memory_()
        self.base = dict.fromkeys(COLUMNS, 0)
        self._logged: set[str] = set()

    def _row(self) -> int:
        info = torch.utils.data.get_worker_info()
        return 0 if info is None else 1 + info.id % MAX_WORKERS

    def skip(self, kind: str, detail: str, *, quiet: bool = False) -> None:
        """Count one skipped sample of `kind`; the first of a kind in a process is logged, unless `quiet`."""
        self.table[self._row(), SKIP_KINDS.index(kind)] += 1
        if not quiet and kind not in self._logged and kind != "filtered":
            self._logged.add(kind)
            log.warning("skipping corrupt data (%s): %s (further ones are counted, not logged)", kind, detail)

    def read(self) -> None:
        """Count one sample handed on for training."""
        self.table[self._row(), -1] += 1

    def totals(self) -> dict[str, int]:
        """{"read": n, kind: n, ...} summed over all processes (and the earlier totals of ``add``)."""
        return {k: int(v) + self.base[k] for k, v in zip(COLUMNS, self.table.sum(dim=0).tolist())}

    def reset(self) -> None:
        self.table.zero_()
        self.base = dict.fromkeys(COLUMNS, 0)

    def add(self, totals: dict[str, int]) -> None:
        """Count on from earlier totals (a resumed run's), kept in this process beside the table."""
        for kind, n in totals.items():
            if kind in COLUMNS:
                self.base[kind] += int(n)

    def snapshot(self) -> list[int]:
        """This process's row number followed by its row: what a sample carries to say what was read before it."""
        row = self._row()
        return [row, *self.table[row].tolist()]


def breakdown(totals: dict[str, int]) -> str:
    """'kind=n, ...' for the nonzero skip counts."""
    return ", ".join(f"{k}={totals[k]}" for k in SKIP_KINDS if totals[k]) or "none"
