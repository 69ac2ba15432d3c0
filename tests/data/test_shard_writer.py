"""Tests of the shared shard writer (ldm/data/shard_writer.py): boundaries, bytes, atomicity, manifests."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from ldm.data.shard_writer import (
    ShardWriter,
    atomic_file,
    missing_shards,
    read_complete_manifest,
    staged_folder,
    write_manifest,
)


def samples(n: int, start: int = 0) -> list[dict]:
    return [
        {"__key__": f"{i:04d}", "txt": f"caption {i}".encode(), "moments.npy": bytes([i % 256]) * (i + 1)}
        for i in range(start, start + n)
    ]


def reference_tar(batch: list[dict]) -> bytes:
    """The expected shard, built with the standard library alone: members in key order, then by member
    name; mode 0o444, owner ldm:ldm, mtime 0."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for sample in batch:
            for member in sorted(k for k in sample if k != "__key__"):
                info = tarfile.TarInfo(f"{sample['__key__']}.{member}")
                info.size, info.mode, info.mtime = len(sample[member]), 0o444, 0
                info.uname = info.gname = "ldm"
                tar.addfile(info, io.BytesIO(sample[member]))
    return buffer.getvalue()


def test_shard_boundaries_names_and_bytes(tmp_path):
    data = samples(7)
    with ShardWriter(tmp_path, "train-%06d.tar", samples_per_shard=3) as sink:
        for sample in data:
            sink.write(sample)
    assert sink.shards == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert sink.samples == 7
    for name, batch in zip(sink.shards, (data[0:3], data[3:6], data[6:7]), strict=True):
        assert (tmp_path / name).read_bytes() == reference_tar(batch)
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", *sink.shards]


def test_full_shard_is_in_place_before_the_next_sample(tmp_path):
    with ShardWriter(tmp_path / "out", "val/%06d.tar", samples_per_shard=2) as sink:
        for sample in samples(2):
            sink.write(sample)
        assert (tmp_path / "out" / "val" / "000000.tar").read_bytes() == reference_tar(samples(2))
        sink.write(samples(1, start=2)[0])
        # The second shard is still being written under a temporary name.
        assert sorted(p.name for p in (tmp_path / "out" / "val").glob("*.tar")) == ["000000.tar"]
    assert sink.shards == ["val/000000.tar", "val/000001.tar"]


def test_same_samples_give_the_same_bytes(tmp_path):
    for folder in ("a", "b"):
        with ShardWriter(tmp_path / folder, samples_per_shard=4) as sink:
            for sample in samples(6):
                sink.write(sample)
    for name in ("000000.tar", "000001.tar", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_manifest_lists_shards_samples_and_metadata(tmp_path):
    with ShardWriter(tmp_path, samples_per_shard=2, metadata={"seed": 3}) as sink:
        for sample in samples(5):
            sink.write(sample)
        sink.metadata["skipped"] = {"unreadable_image": 1}  # known only at the end
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == {
        "seed": 3,
        "skipped": {"unreadable_image": 1},
        "shards": ["000000.tar", "000001.tar", "000002.tar"],
        "samples": 5,
    }
    assert read_complete_manifest(tmp_path) == manifest


def test_no_samples_no_shards(tmp_path):
    with ShardWriter(tmp_path / "empty", samples_per_shard=2):
        pass
    assert os.listdir(tmp_path / "empty") == ["manifest.json"]
    assert read_complete_manifest(tmp_path / "empty") == {"shards": [], "samples": 0}


def test_exception_midway_leaves_no_complete_looking_set(tmp_path):
    # A complete set is there; rewriting it fails in the middle of its second shard.
    with ShardWriter(tmp_path, samples_per_shard=3, metadata={"run": 1}) as sink:
        for sample in samples(6):
            sink.write(sample)
    assert read_complete_manifest(tmp_path) is not None
    old_second = (tmp_path / "000001.tar").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(tmp_path, samples_per_shard=3, metadata={"run": 2}) as sink:
            for i, sample in enumerate(samples(6, start=100)):
                if i == 4:
                    raise KeyboardInterrupt
                sink.write(sample)
    assert sorted(os.listdir(tmp_path)) == ["000000.tar", "000001.tar"]  # no manifest, no temporary file
    assert read_complete_manifest(tmp_path) is None
    assert (tmp_path / "000000.tar").read_bytes() == reference_tar(samples(3, start=100))  # closed before
    assert (tmp_path / "000001.tar").read_bytes() == old_second  # the half-written one never replaced it


def test_writer_of_part_of_a_set_writes_no_manifest(tmp_path):
    write_manifest(tmp_path, [], 0, {"old": True}, name="cache.json")
    shards = []
    for split in ("train", "val"):
        with ShardWriter(
            tmp_path, f"{split}-%06d.tar", 2, manifest="cache.json", writes_manifest=False
        ) as sink:
            for sample in samples(3):
                sink.write(sample)
        shards += sink.shards
        assert not (tmp_path / "cache.json").exists()  # the old description went with the first shard
    write_manifest(tmp_path, shards, 6, {"format": "x"}, name="cache.json")
    assert read_complete_manifest(tmp_path, "cache.json") == {
        "format": "x",
        "shards": ["train-000000.tar", "train-000001.tar", "val-000000.tar", "val-000001.tar"],
        "samples": 6,
    }


def test_complete_set_check(tmp_path):
    assert read_complete_manifest(tmp_path) is None  # no manifest
    (tmp_path / "a.tar").write_bytes(b"")
    write_manifest(tmp_path, ["a.tar", "sub/b.tar"], 2)
    assert read_complete_manifest(tmp_path) is None  # a listed shard is missing
    assert missing_shards(tmp_path, json.loads((tmp_path / "manifest.json").read_text())) == ["sub/b.tar"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.tar").write_bytes(b"")
    assert read_complete_manifest(tmp_path) == {"shards": ["a.tar", "sub/b.tar"], "samples": 2}
    (tmp_path / "manifest.json").write_text('{"shards": ["a.tar"')  # cut short
    assert read_complete_manifest(tmp_path) is None
    (tmp_path / "manifest.json").write_text('["a.tar"]')  # not an object
    assert read_complete_manifest(tmp_path) is None


def test_manifest_without_a_shard_list_needs_a_legacy_reader(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "000000.tar").write_bytes(b"")
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "train": ["train/000000.tar"]}))
    assert read_complete_manifest(tmp_path) is None
    with pytest.raises(ValueError, match="does not list its shards"):
        missing_shards(tmp_path, {"version": 1}, legacy_shards=lambda m: m["train"])
    manifest = read_complete_manifest(tmp_path, legacy_shards=lambda m: m["train"])
    assert manifest == {"version": 1, "train": ["train/000000.tar"]}


def test_metadata_cannot_shadow_the_manifest_entries(tmp_path):
    with pytest.raises(ValueError, match="'samples' is the manifest's own"):
        write_manifest(tmp_path, [], 0, {"samples": 3})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"samples_per_shard": 0}, "samples_per_shard must be at least 1"),
        ({"pattern": "shard.tar"}, "needs one integer field"),
        ({"pattern": "%s-%d.tar"}, "needs one integer field"),
    ],
)
def test_bad_arguments(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        ShardWriter(tmp_path, **arguments)


def test_atomic_file_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as stream:
            stream.write(b"new, half")
            raise RuntimeError
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["cache.json"]
    with atomic_file(path) as stream:
        stream.write(b"new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["cache.json"]


def write_small_set(folder: Path, tag: str) -> None:
    with ShardWriter(folder, samples_per_shard=2, metadata={"tag": tag}) as sink:
        for sample in samples(3):
            sink.write(sample)


def test_staged_folder_renames_a_finished_set_and_drops_a_failed_one(tmp_path):
    folder = tmp_path / "set"
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(folder) as staging:
            write_small_set(staging, "failed")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    # Leftovers without a manifest are replaced.
    folder.mkdir()
    (folder / "000000.tar").write_bytes(b"partial")
    with staged_folder(folder) as staging:
        assert staging.parent == tmp_path and staging.name.startswith("set.tmp-")
        write_small_set(staging, "ours")
    assert os.listdir(tmp_path) == ["set"]
    assert read_complete_manifest(folder)["tag"] == "ours"
    assert (folder / "000000.tar").read_bytes() == reference_tar(samples(2))


def test_staged_folder_keeps_a_set_another_process_finished_first(tmp_path):
    folder = tmp_path / "set"
    with staged_folder(folder) as staging:
        write_small_set(staging, "ours")
        write_small_set(folder, "theirs")  # another rank renamed its copy into place meanwhile
    assert os.listdir(tmp_path) == ["set"]
    assert read_complete_manifest(folder)["tag"] == "theirs"


def test_staged_folder_refuses_a_set_without_manifest(tmp_path):
    with pytest.raises(RuntimeError, match="has no complete manifest"):
        with staged_folder(tmp_path / "set") as staging:
            (staging / "000000.tar").write_bytes(b"")
    assert os.listdir(tmp_path) == []
