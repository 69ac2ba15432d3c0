"""Shard URL specifications, as webdataset users write them.

A spec is a brace pattern (``/data/{000000..000099}.tar``), several patterns joined by ``::``, a
list of those, or ``@path`` to a text file with one URL or pattern per line. URLs are local paths,
anything fsspec can open, or ``pipe:COMMAND`` whose standard output is the tar (``pipe:aws s3 cp
s3://bucket/000000.tar -``, ``pipe:curl -s -L https://...``), read by webdataset as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

from braceexpand import braceexpand

UrlSpec = Union[str, Sequence[str]]


def expand_urls(spec: UrlSpec) -> list[str]:
    """The list of shard URLs a spec names, in order."""
    if isinstance(spec, str):
        spec = [spec]
    urls: list[str] = []
    for item in spec:
        item = str(item).strip()
        if not item:
            continue
        if item.startswith("@"):
            path = Path(item[1:])
            if not path.is_file():
                raise FileNotFoundError(f"URL list file not found: {path}")
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            urls += expand_urls([line for line in lines if line and not line.startswith("#")])
            continue
        for part in item.split("::"):
            urls += list(braceexpand(part.strip()))
    if not urls:
        raise ValueError(f"no shard URLs in {spec!r}")
    return urls


def expand_sources(spec: UrlSpec) -> list[list[str]]:
    """The shard URLs of each source of a spec: its ``::``-joined parts, or the items of a list."""
    items = [spec] if isinstance(spec, str) else list(spec)
    sources = [part for item in items for part in str(item).split("::") if part.strip()]
    return [expand_urls(part) for part in sources]


def mixture_weights(sources: list[list[str]], weights: Sequence[float]) -> list[float]:
    """Per-URL draw weights that give each source its share of the shard draws (weight / its shards)."""
    if len(weights) != len(sources):
        raise ValueError(
            f"{len(weights)} source weights for {len(sources)} sources (the '::'-separated parts of the shard spec)"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"source weights must be non-negative with a positive sum, got {list(weights)}")
    return [w / len(urls) for urls, w in zip(sources, weights) for _ in urls]
