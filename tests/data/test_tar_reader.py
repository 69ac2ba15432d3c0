"""The end-of-archive check of ldm/data/tar_reader.py on other shapes of tar streams."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest
from webdataset import TarWriter

from ldm.data.tar_reader import TruncatedShardError, read_shards

BLOCK = tarfile.BLOCKSIZE


def tar_bytes(n: int) -> bytes:
    """A shard of n samples (two members each), padded to the record size as TarWriter writes it."""
    buffer = io.BytesIO()
    with TarWriter(buffer) as writer:
        for i in range(n):
            writer.write({"__key__": f"k{i}", "txt": f"caption {i}".encode(), "cls": str(i).encode()})
    return buffer.getvalue()


def end_of_members(data: bytes) -> int:
    """Offset of the end-of-archive blocks, by tarfile's own index."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + -(-last.size // BLOCK) * BLOCK


def read(tmp_path, data: bytes, name: str = "000000.tar") -> tuple[list[str], list[Exception]]:
    path = tmp_path / name
    path.write_bytes(data)
    errors: list[Exception] = []
    keys = [s["__key__"] for s in read_shards([str(path)], lambda e: errors.append(e) or True)]
    return keys, errors


def test_a_compressed_shard_is_checked_after_decompression(tmp_path):
    keys, errors = read(tmp_path, gzip.compress(tar_bytes(5)), "000000.tar.gz")
    assert keys == [f"k{i}" for i in range(5)] and errors == []


def test_trailing_bytes_after_the_end_of_archive_blocks_are_not_a_cut(tmp_path):
    keys, errors = read(tmp_path, tar_bytes(3) + b"whatever follows the archive")
    assert keys == ["k0", "k1", "k2"] and errors == []


def test_an_empty_archive_is_whole(tmp_path):
    keys, errors = read(tmp_path, tar_bytes(0))
    assert keys == [] and errors == []


@pytest.mark.parametrize("ending", ["one zero block", "a garbled header"])
def test_a_shard_whose_members_stop_without_both_zero_blocks_is_truncated(tmp_path, ending):
    data = tar_bytes(4)
    end = end_of_members(data)
    if ending == "one zero block":
        data = data[: end + BLOCK]  # the second zero block is cut off
    else:
        data = data[:end] + b"\xff" * BLOCK + data[end:]  # a header tarfile cannot parse ends it quietly
    keys, errors = read(tmp_path, data)
    assert keys == ["k0", "k1", "k2", "k3"]
    assert [type(e) for e in errors] == [TruncatedShardError]
    assert str(tmp_path / "000000.tar") in str(errors[0])
