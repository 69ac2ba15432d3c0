"""Tests of the synthetic shapes set and its shard writer (ldm/data/shapes.py)."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.config import DataConfig
from ldm.data import shapes
from ldm.data.shapes import (
    COLORS,
    SHAPES,
    ShapesShards,
    ensure_shapes_dataset,
    generate_shapes,
    write_shapes_dataset,
)

SMALL = {"resolution": 32, "seed": 0, "num_train": 10, "num_val": 3, "samples_per_shard": 4}


def read_shard(path: str) -> dict[str, dict[str, bytes]]:
    """Members of a tar shard grouped by key: {key: {extension: bytes}}."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, extension = member.name.split(".", 1)
            samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return samples


def read_all(paths: list[str]) -> dict[str, dict[str, bytes]]:
    samples = {}
    for path in paths:
        samples.update(read_shard(path))
    return samples


def test_layout_of_written_set(tmp_path):
    result = write_shapes_dataset(tmp_path, **SMALL)
    folder = tmp_path / "32px-seed0-n10-3"
    assert result == ShapesShards(
        train=[str(folder / "train" / f"{i:06d}.tar") for i in range(3)],
        val=[str(folder / "val" / "000000.tar")],
    )
    train = read_all(result.train)
    assert sorted(train) == [f"{i:09d}" for i in range(10)]
    assert [len(read_shard(p)) for p in result.train] == [4, 4, 2]
    assert all(set(members) == {"png", "txt", "json"} for members in train.values())
    assert len(read_all(result.val)) == 3
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["train"] == ["train/000000.tar", "train/000001.tar", "train/000002.tar"]
    assert manifest["val"] == ["val/000000.tar"]
    assert {k: manifest[k] for k in SMALL} == SMALL
    # Nothing but the finished set is left in the root.
    assert os.listdir(tmp_path) == ["32px-seed0-n10-3"]


def test_same_seed_same_bytes_and_different_seed_different_images(tmp_path):
    first = write_shapes_dataset(tmp_path / "a", **SMALL)
    second = write_shapes_dataset(tmp_path / "b", **SMALL)
    for path_a, path_b in zip(first.train + first.val, second.train + second.val, strict=True):
        assert Path(path_a).read_bytes() == Path(path_b).read_bytes()
    other = write_shapes_dataset(tmp_path / "a", **{**SMALL, "seed": 1})
    pngs = {members["png"] for members in read_all(first.train).values()}
    other_pngs = {members["png"] for members in read_all(other.train).values()}
    assert pngs.isdisjoint(other_pngs)


def test_parallel_writing_gives_the_same_bytes(tmp_path, monkeypatch):
    serial = write_shapes_dataset(tmp_path / "serial", **SMALL)
    monkeypatch.setattr(shapes, "_PARALLEL_MIN_SAMPLES", 1)  # use worker processes even for 13 images
    parallel = write_shapes_dataset(tmp_path / "parallel", **SMALL)
    for path_a, path_b in zip(serial.train + serial.val, parallel.train + parallel.val, strict=True):
        assert Path(path_a).read_bytes() == Path(path_b).read_bytes()


def test_written_samples_match_generate_shapes(tmp_path):
    result = write_shapes_dataset(tmp_path, **SMALL)
    written = read_all(result.val)
    for sample in generate_shapes(3, resolution=32, seed=0, split="val"):
        members = written[sample.key]
        assert members["txt"].decode() == sample.caption
        assert json.loads(members["json"]) == sample.metadata
        decoded = np.asarray(Image.open(io.BytesIO(members["png"])))
        np.testing.assert_array_equal(decoded, np.asarray(sample.image))


def test_train_and_val_share_no_image():
    # At 16 px there are ~355k distinct images, so 3000 x 400 free draws would collide ~3 times.
    train = {s.image.tobytes() for s in generate_shapes(3000, resolution=16, seed=0, split="train")}
    val = {s.image.tobytes() for s in generate_shapes(400, resolution=16, seed=0, split="val")}
    assert len(train) > 2950 and len(val) > 390  # a few repeats within a split are allowed
    assert train.isdisjoint(val)


def test_captions_name_color_and_shape_and_use_every_template():
    samples = list(generate_shapes(400, resolution=32, seed=5))
    templates = {s.metadata["template"] for s in samples}
    assert templates == {0, 1, 2, 3}
    for s in samples:
        words = s.caption.split()
        assert s.metadata["color"] in words and s.metadata["shape"] in words
        if s.metadata["template"] == 0:
            assert s.caption == f"a {s.metadata['color']} {s.metadata['shape']}"
    plain = {f"a {c} {sh}" for c in COLORS for sh in SHAPES}
    assert sum(s.caption in plain for s in samples) == sum(s.metadata["template"] == 0 for s in samples) > 50


def test_size_and_position_words():
    assert [shapes.size_word(x) for x in (0.4, 0.53, 0.54, 0.66, 0.67, 0.8)] == [
        "small",
        "small",
        "medium",
        "medium",
        "large",
        "large",
    ]
    assert shapes.position_words(0.2, 0.2) == "in the top left"
    assert shapes.position_words(0.5, 0.5) == "in the center"
    assert shapes.position_words(0.8, 0.5) == "on the right"
    assert shapes.position_words(0.5, 0.75) == "at the bottom"
    for s in generate_shapes(200, resolution=32, seed=2):
        meta = s.metadata
        if meta["template"] == 3:
            expected = f"a {shapes.size_word(meta['size'])} {meta['color']} {meta['shape']} "
            assert s.caption == expected + shapes.position_words(meta["cx"], meta["cy"])


@pytest.mark.parametrize("resolution", [32, 64])
def test_shape_geometry_color_and_background(resolution):
    sizes, kinds, colors = [], set(), set()
    for s in generate_shapes(120, resolution=resolution, seed=3):
        meta = s.metadata
        pixels = np.asarray(s.image).astype(np.int64)  # h w c
        assert pixels.shape == (resolution, resolution, 3)
        assert meta["width"] == meta["height"] == resolution
        size, cx, cy = meta["size"], meta["cx"], meta["cy"]
        sizes.append(size)
        kinds.add(meta["shape"])
        colors.add(meta["color"])
        # The box lies inside the image, and nothing is drawn outside it.
        left, right = (cx - size / 2) * resolution, (cx + size / 2) * resolution
        top, bottom = (cy - size / 2) * resolution, (cy + size / 2) * resolution
        assert 0 <= left < right <= resolution and 0 <= top < bottom <= resolution
        ys, xs = np.nonzero(pixels.max(axis=2))
        assert xs.min() >= math.floor(left) and xs.max() <= math.ceil(right) - 1
        assert ys.min() >= math.floor(top) and ys.max() <= math.ceil(bottom) - 1
        # Every pixel is a shade of the pure hue (edges are darker, never another hue); the
        # background is exactly black.
        hue = np.array(COLORS[meta["color"]])
        intensity = pixels.max(axis=2, keepdims=True)
        np.testing.assert_array_equal(pixels, intensity * (hue // 255))
        # The interior is exactly the pure hue: the centre pixel is inside every upright shape.
        centre = pixels[int((top + bottom) / 2 + 0.25 * size * resolution / 2), int(cx * resolution)]
        assert tuple(centre) == COLORS[meta["color"]]
        # Covered area agrees with the shape's closed form within the edge quantisation.
        area = intensity.sum() / 255
        expected = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}[meta["shape"]]
        assert area / (size * resolution) ** 2 == pytest.approx(expected, rel=0.06)
    assert min(sizes) >= 0.4 and max(sizes) <= 0.8
    assert max(sizes) - min(sizes) > 0.3  # spread over the range, not stuck in one place
    assert kinds == set(SHAPES) and colors == set(COLORS)


def test_triangle_is_upright():
    for s in generate_shapes(60, resolution=64, seed=4):
        if s.metadata["shape"] != "triangle":
            continue
        mask = np.asarray(s.image).max(axis=2) > 127
        rows = np.flatnonzero(mask.any(axis=1))
        widths = mask[rows].sum(axis=1)
        height = len(rows)
        # Width grows linearly from the apex to the base, which spans the whole box.
        assert widths[: height // 4].mean() < 0.3 * widths.max()
        assert widths[-2:].max() == widths.max()
        assert widths.max() == pytest.approx(height, abs=2)


def test_existing_set_is_reused_without_rewriting(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ldm.data.shapes"):
        first = write_shapes_dataset(tmp_path, **SMALL)
    assert "generating the shapes set: 10 train + 3 val images at 32px" in caplog.text
    files = sorted((tmp_path / "32px-seed0-n10-3").rglob("*"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ldm.data.shapes"):
        second = write_shapes_dataset(tmp_path, **SMALL)
    assert second == first
    assert "generating" not in caplog.text
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real_write_shard = shapes._write_shard
    calls = []

    def fail_on_second_shard(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write_shard(*args)

    monkeypatch.setattr(shapes, "_write_shard", fail_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        write_shapes_dataset(tmp_path, **SMALL)
    assert os.listdir(tmp_path) == []  # the staging folder was removed, no final folder exists

    monkeypatch.setattr(shapes, "_write_shard", real_write_shard)
    result = write_shapes_dataset(tmp_path, **SMALL)
    assert len(read_all(result.train)) == 10


def test_leftovers_of_a_killed_run_are_not_taken_for_a_set(tmp_path):
    folder = tmp_path / "32px-seed0-n10-3"
    # A killed run leaves its staging folder (ignored), and a folder without a manifest is incomplete.
    staging = tmp_path / "32px-seed0-n10-3.tmp-dead"
    (staging / "train").mkdir(parents=True)
    (staging / "train" / "000000.tar").write_bytes(b"partial")
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "000000.tar").write_bytes(b"partial")
    result = write_shapes_dataset(tmp_path, **SMALL)
    assert len(read_all(result.train)) == 10
    assert (folder / "manifest.json").is_file()
    # A manifest whose shards are missing is not trusted either.
    Path(result.train[1]).unlink()
    result = write_shapes_dataset(tmp_path, **SMALL)
    assert len(read_all(result.train)) == 10


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"resolution": 15}, "resolution must be at least 16"),
        ({"num_train": 0}, "num_train must be at least 1"),
        ({"num_val": -1}, "num_val must be non-negative"),
        ({"samples_per_shard": 0}, "samples_per_shard must be at least 1"),
        ({"seed": -3}, "seed must be non-negative"),
    ],
)
def test_bad_arguments_raise(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        write_shapes_dataset(tmp_path, **{**SMALL, **override})
    assert not tmp_path.joinpath("32px-seed0-n10-3").exists()


def test_bad_split_raises():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        next(generate_shapes(1, resolution=32, seed=0, split="test"))


def test_ensure_shapes_dataset_uses_the_config(tmp_path):
    cfg = DataConfig(
        root=str(tmp_path / "shapes"), resolution=16, seed=7, num_train=5, num_val=2, samples_per_shard=2
    )
    result = ensure_shapes_dataset(cfg)
    folder = tmp_path / "shapes" / "16px-seed7-n5-2"
    assert result.train == [str(folder / "train" / f"{i:06d}.tar") for i in range(3)]
    assert result.val == [str(folder / "val" / "000000.tar")]
    image = Image.open(io.BytesIO(read_shard(result.val[0])["000000001"]["png"]))
    assert image.size == (16, 16) and image.mode == "RGB"
