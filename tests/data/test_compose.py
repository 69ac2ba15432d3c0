"""Tests of the compose world (ldm/data/compose.py): layouts, captions, held-out pairs, shards."""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.config import ComposeConfig, ComposeTaskMix, DataConfig
from ldm.data import shapes
from ldm.data.compose import (
    GAP,
    RELATION_MARGIN,
    SIDE_MARGIN,
    SIZE_RANGES,
    ComposeRules,
    compose_folder,
    ensure_compose_dataset,
    existing_compose_dataset,
    generate_compose,
    place_scene,
    render_scene,
    write_compose_dataset,
)
from ldm.data.compose_grammar import KINDS, RELATIONS, ObjectSpec, SceneSpec, caption_of, parse_caption
from ldm.data.compose_prompts import evaluation_captions
from ldm.data.shapes import COLORS
from ldm.data.shards import shard_urls
from tests.data.test_shapes import read_all

SMALL = {"resolution": 32, "seed": 0, "num_train": 10, "num_val": 3, "samples_per_shard": 4}
HELD_OUT = ComposeConfig().held_out


@pytest.fixture(scope="module")
def train_samples():
    """2000 training samples at 64 px (the preset's resolution)."""
    return list(generate_compose(2000, resolution=64, seed=0))


def boxes(metadata: dict) -> list[tuple[float, float, float]]:
    """(cx, cy, side) of each object, as fractions of the image side."""
    return [(o["cx"], o["cy"], o["side"]) for o in metadata["objects"]]


def test_same_seed_same_samples_and_another_seed_others():
    first = list(generate_compose(40, resolution=32, seed=3))
    again = list(generate_compose(40, resolution=32, seed=3))
    other = list(generate_compose(40, resolution=32, seed=4))
    for a, b in zip(first, again, strict=True):
        assert a.key == b.key and a.caption == b.caption and a.metadata == b.metadata
        assert a.image.tobytes() == b.image.tobytes()
    assert [s.metadata for s in first] != [s.metadata for s in other]
    assert {s.image.tobytes() for s in first}.isdisjoint(s.image.tobytes() for s in other)


def test_written_set_is_deterministic_in_parallel_too(tmp_path, monkeypatch):
    serial = write_compose_dataset(tmp_path / "serial", **SMALL)
    monkeypatch.setattr(shapes, "_PARALLEL_MIN_SAMPLES", 1)  # worker processes even for 13 images
    parallel = write_compose_dataset(tmp_path / "parallel", **SMALL)
    for a, b in zip(serial.train + serial.val, parallel.train + parallel.val, strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    # What is written is what generate_compose renders.
    written = read_all(serial.train)
    for sample in generate_compose(10, resolution=32, seed=0):
        members = written[sample.key]
        assert members["txt"].decode() == sample.caption
        assert json.loads(members["json"]) == sample.metadata
        decoded = np.asarray(Image.open(io.BytesIO(members["png"])))
        np.testing.assert_array_equal(decoded, np.asarray(sample.image))


def test_objects_never_overlap_and_stay_inside(train_samples):
    for sample in train_samples:
        placed = boxes(sample.metadata)
        for cx, cy, side in placed:
            assert (
                side / 2 - 1e-9 <= cx <= 1 - side / 2 + 1e-9 and side / 2 - 1e-9 <= cy <= 1 - side / 2 + 1e-9
            )
        for i in range(len(placed)):
            for j in range(i + 1, len(placed)):
                (x1, y1, s1), (x2, y2, s2) = placed[i], placed[j]
                # Boxes are at least GAP apart along x or along y (up to the rounding to canvas pixels).
                reach = (s1 + s2) / 2 + GAP - 1 / (64 * 4)
                assert abs(x1 - x2) >= reach or abs(y1 - y2) >= reach


def test_pixels_show_each_object_in_its_box_and_nothing_else(train_samples):
    for sample in train_samples[:300]:
        pixels = np.asarray(sample.image).astype(np.int64)  # h w c
        covered = np.zeros(pixels.shape[:2], dtype=bool)
        for item in sample.metadata["objects"]:
            left = math.floor((item["cx"] - item["side"] / 2) * 64)
            right = math.ceil((item["cx"] + item["side"] / 2) * 64)
            top = math.floor((item["cy"] - item["side"] / 2) * 64)
            bottom = math.ceil((item["cy"] + item["side"] / 2) * 64)
            box = pixels[top:bottom, left:right]
            hue = np.array(COLORS[item["color"]]) // 255
            # Every pixel of the box is a shade of the object's hue (edges darker, never another hue) ...
            np.testing.assert_array_equal(box, box.max(axis=2, keepdims=True) * hue)
            # ... and its centre row, a quarter of the way down from the middle, is the full hue.
            row = int((item["cy"] + item["side"] / 8) * 64)
            assert tuple(pixels[row, int(item["cx"] * 64)]) == COLORS[item["color"]]
            covered[top:bottom, left:right] = True
        assert pixels[~covered].max(initial=0) == 0  # black outside the boxes


def test_relations_hold_with_a_margin_along_the_dominant_axis(train_samples):
    relations = {}
    for sample in train_samples:
        meta = sample.metadata
        if meta["kind"] != "relation":
            continue
        (x1, y1, _), (x2, y2, _) = boxes(meta)
        dx, dy = x2 - x1, y2 - y1  # the second object's centre relative to the first
        along, across = {
            "to the left of": (dx, dy), "to the right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx),
        }[meta["relation"]]  # fmt: skip
        assert along >= RELATION_MARGIN
        assert abs(across) <= along / 2 + 1e-9
        relations[meta["relation"]] = relations.get(meta["relation"], 0) + 1
    assert len(relations) == 4 and min(relations.values()) > 100


def test_every_caption_parses_back_to_its_layout(train_samples):
    for sample in train_samples:
        meta = sample.metadata
        spec = parse_caption(sample.caption)
        assert caption_of(spec) == sample.caption
        assert spec.kind == meta["kind"] and spec.relation == meta["relation"]
        assert [(o.color, o.shape) for o in spec.objects] == [
            (o["color"], o["shape"]) for o in meta["objects"]
        ]
        if meta["size_words"]:
            assert [o.size for o in spec.objects] == [o["size"] for o in meta["objects"]]
        else:
            assert all(o.size is None for o in spec.objects)
        # The size words are true: each side lies in its size's range (up to the canvas rounding).
        for item in meta["objects"]:
            low, high = SIZE_RANGES[item["size"]]
            assert low - 1 / 256 <= item["side"] <= high + 1 / 256
        if spec.kind == "count":
            assert len({(o["color"], o["shape"], o["size"]) for o in meta["objects"]}) == 1


def test_held_out_pairs_appear_in_no_training_image_or_caption(train_samples):
    shown = set()
    for sample in train_samples:
        for item in sample.metadata["objects"]:
            shown.add(f"{item['color']} {item['shape']}")
        for pair in HELD_OUT:
            assert pair not in sample.caption
    assert shown.isdisjoint(HELD_OUT)
    assert len(shown) == 18 - len(HELD_OUT)  # every other pair is shown


def test_no_training_caption_is_an_evaluation_prompt(train_samples):
    excluded = evaluation_captions(HELD_OUT)
    plain = [caption_of(parse_caption(s.caption).plain()) for s in train_samples]
    assert excluded.isdisjoint(plain)
    # The eight single prompts take eight seen pairs: the six others are the only single scenes.
    singles = {p for p, s in zip(plain, train_samples, strict=True) if s.metadata["kind"] == "single"}
    excluded_singles = {c for c in excluded if parse_caption(c).kind == "single"}
    assert len(singles) == 14 - 8 and singles.isdisjoint(excluded_singles)


def test_kinds_and_size_words_follow_the_mix(train_samples):
    n = len(train_samples)
    weights = ComposeTaskMix()
    for kind in KINDS:
        share = getattr(weights, kind)
        count = sum(s.metadata["kind"] == kind for s in train_samples)
        assert abs(count - n * share) <= 4 * math.sqrt(n * share * (1 - share))  # within 4 sigma
    with_sizes = sum(s.metadata["size_words"] for s in train_samples)
    assert abs(with_sizes - n / 2) <= 4 * math.sqrt(n / 4)
    counts = [len(s.metadata["objects"]) for s in train_samples if s.metadata["kind"] == "count"]
    assert set(counts) == {2, 3}


def test_a_custom_mix_and_held_out_pairs_are_obeyed():
    compose = ComposeConfig(
        held_out=["cyan square"], task_mix=ComposeTaskMix(single=0, count=1, pair=0, relation=0), size_words=0
    )
    samples = list(generate_compose(200, resolution=32, seed=1, compose=compose))
    assert {s.metadata["kind"] for s in samples} == {"count"}
    assert all(not s.metadata["size_words"] for s in samples)
    assert all("cyan square" not in s.caption for s in samples)
    assert {o["color"] + " " + o["shape"] for s in samples for o in s.metadata["objects"]} >= {"red triangle"}


def test_relation_sides_put_each_object_on_its_side_of_the_midline():
    relations_only = ComposeTaskMix(single=0, count=0, pair=0, relation=1)
    compose = ComposeConfig(task_mix=relations_only, relation_sides=True)
    samples = list(generate_compose(400, resolution=64, seed=0, compose=compose))
    relations = {}
    for sample in samples:
        meta = sample.metadata
        (x1, y1, _), (x2, y2, _) = boxes(meta)
        axis, sign = RELATIONS[meta["relation"]]
        first, second = (x1, y1)[axis], (x2, y2)[axis]
        # The first object's centre lies before the midline by half the margin, the second's after it.
        assert sign * (0.5 - first) >= SIDE_MARGIN - 1e-9
        assert sign * (second - 0.5) >= SIDE_MARGIN - 1e-9
        assert abs((y2 - y1, x2 - x1)[axis]) <= abs((x2 - x1, y2 - y1)[axis]) / 2 + 1e-9  # still dominant
        relations[meta["relation"]] = relations.get(meta["relation"], 0) + 1
    assert len(relations) == 4 and min(relations.values()) > 60
    # Without the option the first object crosses the midline in a good share of relation scenes.
    plain = generate_compose(400, resolution=64, seed=0, compose=ComposeConfig(task_mix=relations_only))
    crossed = 0
    for sample in plain:
        meta = sample.metadata
        axis, sign = RELATIONS[meta["relation"]]
        crossed += sign * (0.5 - (boxes(meta)[0][axis])) < SIDE_MARGIN
    assert crossed > 100  # the default lets many relation scenes cross it
    # The option has its own folder; the default's folder (and so every existing set) is unchanged.
    sizes = dict(resolution=64, seed=0, num_train=10, num_val=3)
    plain_folder = compose_folder("r", **sizes, compose=ComposeConfig(task_mix=relations_only))
    assert compose_folder("r", **sizes, compose=compose) != plain_folder


def test_relation_same_color_sets_the_share_of_alike_colours():
    relations_only = ComposeTaskMix(single=0, count=0, pair=0, relation=1)

    def alike_share(compose: ComposeConfig) -> float:
        samples = list(generate_compose(600, resolution=32, seed=0, compose=compose))
        for sample in samples:  # still two different seen pairs, captioned as placed
            first, second = sample.metadata["objects"]
            assert (first["color"], first["shape"]) != (second["color"], second["shape"])
            assert f"{first['color']} {first['shape']}" not in HELD_OUT
        return (
            sum(s.metadata["objects"][0]["color"] == s.metadata["objects"][1]["color"] for s in samples) / 600
        )

    assert 0.08 < alike_share(ComposeConfig(task_mix=relations_only)) < 0.22  # as drawn: about 1 in 7
    assert abs(alike_share(ComposeConfig(task_mix=relations_only, relation_same_color=0.5)) - 0.5) < 0.08
    assert alike_share(ComposeConfig(task_mix=relations_only, relation_same_color=1.0)) == 1.0
    assert alike_share(ComposeConfig(task_mix=relations_only, relation_same_color=0.0)) == 0.0


def test_train_and_val_share_no_image():
    train = {s.image.tobytes() for s in generate_compose(1500, resolution=32, seed=0)}
    val = {s.image.tobytes() for s in generate_compose(200, resolution=32, seed=0, split="val")}
    assert len(train) > 1490 and len(val) > 195
    assert train.isdisjoint(val)


def test_place_scene_keeps_given_sizes_and_the_relation():
    spec = parse_caption("a small red circle to the left of a large blue square")
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = place_scene(spec, rng, 64)
        assert scene.spec == spec and scene.caption == caption_of(spec.plain())
        (x1, _), (x2, _) = scene.centre(0), scene.centre(1)
        assert x2 - x1 >= RELATION_MARGIN
        assert [o.size for o in scene.objects] == ["small", "large"]
    assert render_scene(scene).size == (64, 64)
    # Unnamed sizes are drawn, one for all objects of a count scene.
    counted = place_scene(SceneSpec("count", (ObjectSpec("red", "circle"),) * 3), rng, 64, size_words=True)
    assert len({o.side for o in counted.objects}) <= 3 and len({o.size for o in counted.objects}) == 1
    assert counted.caption == f"three {counted.objects[0].size} red circles"


def test_set_layout_reuse_and_folders_per_settings(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ldm.data.shapes"):
        first = write_compose_dataset(tmp_path, **SMALL)
    assert "generating the compose set: 10 train + 3 val images at 32px" in caplog.text
    folder = compose_folder(tmp_path, **{k: v for k, v in SMALL.items() if k != "samples_per_shard"},
                            compose=ComposeConfig())  # fmt: skip
    assert (
        folder.name.startswith("32px-seed0-n10-3-compose-")
        and len(folder.name) == len("32px-seed0-n10-3-compose-") + 8
    )
    assert first.train == [str(folder / "train" / f"{i:06d}.tar") for i in range(3)]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["world"] == "shapes_compose" and manifest["held_out"] == sorted(HELD_OUT)
    assert manifest["task_mix"] == {"single": 0.2, "count": 0.2, "pair": 0.25, "relation": 0.35}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ldm.data.shapes"):
        assert write_compose_dataset(tmp_path, **SMALL) == first
    assert "generating" not in caplog.text
    # Other held-out pairs: another folder beside it.
    other = write_compose_dataset(tmp_path, **SMALL, compose=ComposeConfig(held_out=["cyan circle"]))
    assert Path(other.train[0]).parent.parent != folder
    assert len(list(tmp_path.iterdir())) == 2


def test_data_config_dispatch(tmp_path):
    cfg = DataConfig(name="shapes_compose", root=str(tmp_path), resolution=32, num_train=6, num_val=2,
                     samples_per_shard=3)  # fmt: skip
    assert existing_compose_dataset(cfg) is None
    shards = ensure_compose_dataset(cfg)
    assert existing_compose_dataset(cfg) == shards
    assert shard_urls(cfg) == (shards.train, shards.val)
    assert len(read_all(shards.train)) == 6 and len(read_all(shards.val)) == 2


@pytest.mark.parametrize(
    ("compose", "message"),
    [
        (
            ComposeConfig(held_out=["purple square"]),
            "data.compose.held_out: 'purple square' is not a colour-shape",
        ),
        (ComposeConfig(held_out=["red circle", "red circle"]), "held-out pairs repeat"),
        (
            ComposeConfig(
                held_out=[f"{c} circle" for c in COLORS] + ["red square", "blue square", "cyan square"]
            ),
            "at most 8 colour-shape pairs can be held out, got 9",
        ),
        (ComposeConfig(task_mix=ComposeTaskMix(single=-1)), "task_mix must be non-negative"),
        (ComposeConfig(task_mix=ComposeTaskMix(0, 0, 0, 0)), "with a positive sum"),
        (ComposeConfig(size_words=1.5), r"size_words must be in \[0, 1\]"),
        (ComposeConfig(relation_same_color=-0.5), r"relation_same_color must be in \[0, 1\] or null"),
    ],
)
def test_bad_compose_settings_raise(compose, message):
    with pytest.raises(ValueError, match=message):
        ComposeRules.from_config(compose)


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="resolution must be at least 32 pixels, got 16"):
        write_compose_dataset(tmp_path, **{**SMALL, "resolution": 16})
    with pytest.raises(ValueError, match="unknown split 'test'"):
        next(generate_compose(1, resolution=32, seed=0, split="test"))
    assert list(tmp_path.iterdir()) == []


def test_the_compose_experiment():
    from ldm.training.config_store import compose_config
    from ldm.training.validate import check_config, downsample_factor

    config = compose_config(["experiment=compose"])
    check_config(config)
    assert config.data.name == "shapes_compose" and config.data.resolution == 64
    assert config.data.root == "data/shapes_compose" and config.data.compose == ComposeConfig()
    assert config.autoencoder.resolution == 64 and downsample_factor(config.autoencoder) == 4  # 16x16 latents
    prompts = config.trainer.sample_prompts
    assert len(prompts) >= 4 and {parse_caption(p).kind for p in prompts} == set(KINDS)
    # The other presets keep their data.
    assert (
        compose_config([]).data.name == "shapes"
        and compose_config(["experiment=debug"]).data.name == "shapes"
    )
