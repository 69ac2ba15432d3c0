"""A reader of W&B's offline run files (``run-<id>.wandb``), for tests: wandb ships no public one.

The file is a LevelDB-style log (google/leveldb doc/log_format.md) behind a 7-byte W&B header
(ident ``:W&B``, magic 0xBEE1 as little-endian uint16, version 0). The log is cut into 32 KiB
blocks, counted from the start of the file; a block holds chunks, each with a 7-byte header
(CRC-32 as little-endian uint32, data length as little-endian uint16, type FULL=1, FIRST=2,
MIDDLE=3, LAST=4) and its data; a block's last < 7 bytes are zero padding. A record that does not
fit the rest of a block is cut into FIRST, MIDDLE... and LAST chunks. W&B's checksum is zlib's
CRC-32 of the data, started from the CRC-32 of the type byte. Each record is one serialised
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto.wandb_internal_pb2 import Record

FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
BLOCK = 32768
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class CorruptLog(ValueError):
    """The file is not a well-formed W&B run log."""


def read_payloads(data: bytes) -> list[bytes]:
    """The records of a whole W&B log file, as bytes, checked against their CRCs."""
    if len(data) < FILE_HEADER.size:
        raise CorruptLog("shorter than the W&B header")
    ident, magic, version = FILE_HEADER.unpack_from(data)
    if (ident, magic, version) != (IDENT, MAGIC, VERSION):
        expected = f"{IDENT!r} {MAGIC:#x} v{VERSION}"
        raise CorruptLog(f"W&B header {ident!r} {magic:#x} v{version}, expected {expected}")
    payloads, pending, pos = [], None, FILE_HEADER.size
    while pos < len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER.size:  # trailer of zeros
            if data[pos : pos + left_in_block].strip(b"\0"):
                raise CorruptLog(f"non-zero block trailer at byte {pos}")
            pos += left_in_block
            continue
        if pos + CHUNK_HEADER.size > len(data):
            raise CorruptLog(f"truncated chunk header at byte {pos}")
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        start = pos + CHUNK_HEADER.size
        chunk = data[start : start + length]
        if len(chunk) != length or length > left_in_block - CHUNK_HEADER.size:
            raise CorruptLog(f"chunk of {length} bytes at byte {pos} overruns its block or the file")
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise CorruptLog(f"bad checksum at byte {pos}")
        pos = start + length
        if kind == FULL and pending is None:
            payloads.append(chunk)
        elif kind == FIRST and pending is None:
            pending = chunk
        elif kind == MIDDLE and pending is not None:
            pending += chunk
        elif kind == LAST and pending is not None:
            payloads.append(pending + chunk)
            pending = None
        else:
            raise CorruptLog(f"chunk type {kind} out of order at byte {pos}")
    if pending is not None:
        raise CorruptLog("file ends inside a record")
    return payloads


def read_records(path: Path) -> list[Record]:
    """The protobuf records of a ``run-<id>.wandb`` file, in order."""
    records = []
    for payload in read_payloads(Path(path).read_bytes()):
        record = Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


@dataclass
class OfflineRun:
    """What one offline run file holds: the run's identity, config, history rows and artifacts."""

    run_id: str
    project: str
    group: str
    job_type: str
    display_name: str
    resumed: bool
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[Any] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> OfflineRun:
        records = read_records(path)
        runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        if not runs:
            raise CorruptLog(f"{path} holds no run record")
        run = runs[0]
        out = cls(run.run_id, run.project, run.run_group, run.job_type, run.display_name, run.resumed)
        for item in run.config.update:
            out.config[item.key] = json.loads(item.value_json)
        for record in records:
            kind = record.WhichOneof("record_type")
            if kind == "config":
                for item in record.config.update:
                    out.config[item.key] = json.loads(item.value_json)
            elif kind == "history":
                out.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "artifact":
                out.artifacts.append(record.artifact)
        return out

    def series(self, key: str) -> list[tuple[int, Any]]:
        """(trainer/global_step, value) of every history row holding `key`."""
        return [(row.get("trainer/global_step"), row[key]) for row in self.history if key in row]


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)
