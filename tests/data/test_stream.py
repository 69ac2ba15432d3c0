"""Truncated shards read through ShardStream (ldm/data/stream.py): the samples before the cut are
kept, the shard is counted once as unreadable and named in a warning, whatever the source."""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import pytest
from webdataset import TarWriter

from ldm.data.shards import shard_dataset
from tests.data.test_quality import png

SAMPLES = 48
CUT_AFTER = 20  # samples whole before the cut


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Path:
    """A shard of 48 image-caption samples, written by webdataset's TarWriter."""
    path = tmp_path_factory.mktemp("stream") / "intact.tar"
    with open(path, "wb") as stream, TarWriter(stream) as writer:
        for i in range(SAMPLES):
            writer.write({"__key__": f"s{i:02d}", "png": png((5 * i, 0, 0), (8, 8)), "txt": f"{i}".encode()})
    return path


def offsets(path: Path) -> tuple[int, int, int]:
    """tarfile's own reckoning of the shard: (offset of the 21st sample's first header, of its first
    member's data, of the end-of-archive blocks)."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    first = next(m for m in members if m.name.startswith(f"s{CUT_AFTER:02d}."))
    last = members[-1]
    end = last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE  # data padded to blocks
    return first.offset, first.offset_data, end


def copy(intact: Path, tmp_path: Path, length: int) -> str:
    path = tmp_path / "000000.tar"
    path.write_bytes(intact.read_bytes()[:length])
    return str(path)


def read(url: str, passes: int = 1) -> tuple[list[str], dict[str, int]]:
    """Keys of the samples read in `passes` passes over the shard at `url`, and the nonzero counts."""
    stream = shard_dataset([url], resolution=8, shuffle=False, shuffle_buffer=0, seed=0)
    keys = [sample["key"] for _ in range(passes) for sample in stream]
    return keys, {kind: n for kind, n in stream.counter.totals().items() if n}


def shard_warnings(caplog, url: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and url in r.getMessage()]


@pytest.mark.parametrize(
    "where, source",
    [
        ("at a member boundary", "path"),
        ("at a member boundary", "pipe"),
        ("inside a header block", "path"),
        ("inside a header block", "pipe"),
        ("inside a member's data", "path"),  # what tarfile itself reports: the same count
    ],
)
def test_a_cut_shard_keeps_its_whole_samples_and_counts_once(intact, tmp_path, caplog, where, source):
    header, data, _ = offsets(intact)
    length = {"at a member boundary": header, "inside a header block": header + 100}.get(where, data + 10)
    path = copy(intact, tmp_path, length)
    url = path if source == "path" else f"pipe:cat {path}"
    with caplog.at_level(logging.WARNING):
        keys, counts = read(url)
    assert keys == [f"s{i:02d}" for i in range(CUT_AFTER)]
    assert counts == {"read": CUT_AFTER, "unreadable_shard": 1}
    assert len(shard_warnings(caplog, url)) == 1


def test_the_intact_shard_reads_whole_without_a_count(intact, caplog):
    with caplog.at_level(logging.WARNING):
        keys, counts = read(str(intact))
    assert keys == [f"s{i:02d}" for i in range(SAMPLES)]
    assert counts == {"read": SAMPLES}
    assert shard_warnings(caplog, str(intact)) == []


def test_a_shard_without_record_padding_is_not_truncated(intact, tmp_path, caplog):
    """Some tools end a tar right after its two zero blocks, without padding it to the record size."""
    _, _, end = offsets(intact)
    assert intact.stat().st_size > end + 2 * tarfile.BLOCKSIZE  # TarWriter pads: this copy is shorter
    url = copy(intact, tmp_path, end + 2 * tarfile.BLOCKSIZE)
    with caplog.at_level(logging.WARNING):
        keys, counts = read(f"pipe:cat {url}")
    assert len(keys) == SAMPLES and counts == {"read": SAMPLES}
    assert caplog.records == []


def test_a_truncated_shard_counts_on_every_pass_and_is_named_once(intact, tmp_path, caplog):
    header, _, _ = offsets(intact)
    url = copy(intact, tmp_path, header)
    with caplog.at_level(logging.WARNING):
        keys, counts = read(url, passes=2)
    assert len(keys) == 2 * CUT_AFTER
    assert counts == {"read": 2 * CUT_AFTER, "unreadable_shard": 2}
    (warning,) = shard_warnings(caplog, url)
    assert "truncated" in warning and "unreadable_shard" in warning
