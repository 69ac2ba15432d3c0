"""The raw samples of tar shards, read as a stream, each shard checked for its end-of-archive blocks.

A tar archive ends with two 512-byte zero blocks (then zeros up to the record size). Python's
tarfile, and so webdataset, ends a shard quietly where a header is missing, truncated or garbled:
a shard cut at a member boundary or inside a header block reads as a shorter shard. Here each shard
is read once, as a stream (a local file, a ``pipe:`` command or a URL, compressed or not), and when
tarfile stops, the block it stopped at and the next one must both be zero blocks; otherwise the
shard is reported as a ``TruncatedShardError`` through the handler, after the samples before the
cut, which are whole, were yielded. Record padding after the two blocks is not required.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from webdataset.cache import StreamingOpen
from webdataset.tariterators import group_by_keys

Handler = Callable[[Exception], bool]
"""handler(error) -> True to skip the rest of the shard and go on, False to stop."""

WEBDATASET_METADATA = re.compile(r"__[^/]*__($|/)")
"""Members such as ``__index__`` that webdataset writers add beside the samples."""


class TruncatedShardError(tarfile.ReadError):
    """A tar shard that stops without its end-of-archive blocks: whatever followed the cut is lost."""


class _EndMarkedTarInfo(tarfile.TarInfo):
    """A TarInfo whose reader notes, at the first zero block, whether a second zero block follows it."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:  # a whole zero block where the next header should be
            tar.end_marked = tar.fileobj.read(tarfile.BLOCKSIZE) == bytes(tarfile.BLOCKSIZE)
            raise  # tarfile ends the archive here


class _ShardTar(tarfile.TarFile):
    """A TarFile that records whether the archive ended with its two zero blocks."""

    tarinfo = _EndMarkedTarInfo
    end_marked = False


def shard_members(stream: BinaryIO, url: str) -> Iterator[dict[str, Any]]:
    """{"fname", "data", "__url__"} of each regular member of the open shard `stream`, in order.

    Raises ``TruncatedShardError`` after the last member when the end-of-archive blocks do not follow.
    """
    tar = _ShardTar.open(fileobj=stream, mode="r|*")
    count, last = 0, None
    for member in tar:
        if member.isreg() and not WEBDATASET_METADATA.match(member.name):
            yield {"fname": member.name, "data": tar.extractfile(member).read(), "__url__": url}
        count, last = count + 1, member.name
        tar.members = []  # streaming: keep no list of the members read
    if not tar.end_marked:
        after = f"after its {count} members (the last '{last}')" if count else "before any member"
        raise TruncatedShardError(f"{url} is truncated: no end-of-archive blocks {after}")


def _members(sources: Iterable[dict[str, Any]], handler: Handler) -> Iterator[dict[str, Any]]:
    """The members of each opened shard, then {} (the end-of-shard mark of group_by_keys)."""
    for source in sources:
        url = source["url"]
        try:
            yield from shard_members(source["stream"], url)
        except Exception as exn:
            if url not in str(exn):
                exn.args = (f"{url}: {exn}",)  # name the shard
            if not handler(exn):
                return
        yield {}


def read_shards(urls: list[str], handler: Handler) -> Iterator[dict[str, Any]]:
    """Raw samples ({"__key__", "__url__", extension: bytes, ...}) of the shards at `urls`, in order.

    Shards are opened as webdataset opens them (paths, ``pipe:`` commands, URLs). An error, a
    truncated shard included, goes to `handler` with a message that names the shard.
    """
    sources = StreamingOpen(handler=handler)({"url": url} for url in urls)
    return group_by_keys(_members(sources, handler), handler=handler)
