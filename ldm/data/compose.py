"""The compose world (``data=shapes_compose``): one to three non-overlapping filled shapes on black.

Each image is a scene of the compose grammar (``ldm.data.compose_grammar``): one object, two or
three alike objects, two different objects, or two objects in a relation ("to the left of", "to
the right of", "above", "below", held between their centres by at least RELATION_MARGIN of the
image side along the relation's axis, which is also the dominant one: the offset across it is at
most half the offset along it). Objects are small or large, their boxes at least GAP apart. Half
of the captions (``ComposeConfig.size_words``) name the sizes.

The held-out colour-shape pairs (``ComposeConfig.held_out``) appear in no image, and no image's
plain caption is one of the compose evaluator's prompts (``ldm.data.compose_prompts``): a scene
that would be is drawn again, within its kind, so the mix of kinds holds. Both splits follow these
rules; like the shapes set, they partition the space of images by a hash, and are written through
the same renderer, writer and manifest (``ldm.data.shapes``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from PIL import Image

from ldm.config import ComposeConfig
from ldm.data.compose_grammar import (
    COUNT_WORDS,
    KINDS,
    RELATIONS,
    SIZES,
    ObjectSpec,
    SceneSpec,
    caption_of,
    relation_holds,
    relation_offsets,
)
from ldm.data.compose_prompts import evaluation_captions, seen_pairs
from ldm.data.shapes import (
    SUPERSAMPLE,
    ShapeSample,
    ShapesShards,
    check_count,
    check_set_arguments,
    config_sizes,
    existing_synthetic_set,
    hashed_split,
    render_shapes,
    set_folder,
    split_rng,
    write_synthetic_set,
)

if TYPE_CHECKING:
    from ldm.config import DataConfig

SIZE_RANGES = {"small": (0.20, 0.25), "large": (0.31, 0.37)}
"""Side of an object's box as a fraction of the image side, by size word."""
GAP = 0.06
"""Least gap between two objects' boxes (fraction of the image side): objects never touch."""
RELATION_MARGIN = 0.15
"""Least offset of the centres along a relation's axis (fraction of the image side)."""
SIDE_MARGIN = 0.15
"""With ``relation_sides``: least offset of each centre from the midline across the relation's axis."""
RELATION_MAX_ANGLE = math.degrees(math.atan(0.5))
"""Largest angle between the centres' offset and the relation's direction (across <= along / 2)."""
MIN_RESOLUTION = 32
"""Smallest image side: a small triangle is then 6 pixels wide."""
_CANDIDATES = 64
"""Positions tried at once for each object before the scene's placement starts over."""
_MAX_TRIES = 1000
"""Placements (or, for captions, draws) tried before giving up on a scene."""
_MANIFEST_VERSION = 1


@dataclass(frozen=True)
class PlacedObject:
    """One object of a scene, its box in units of the supersampled canvas (resolution * 4)."""

    color: str
    shape: str
    size: str
    side: int
    left: int
    top: int


@dataclass(frozen=True)
class ComposeScene:
    """A rendered scene's content: what its caption asks for and where each object is drawn."""

    spec: SceneSpec
    """The scene, every object with its size (the caption drops them unless size_words)."""
    objects: tuple[PlacedObject, ...]
    """In the order of spec.objects."""
    resolution: int
    size_words: bool

    @property
    def caption(self) -> str:
        """The caption: the grammar's form, with or without size words."""
        return caption_of(self.spec if self.size_words else self.spec.plain())

    def centre(self, index: int) -> tuple[float, float]:
        """(x, y) of an object's box centre as fractions of the image side."""
        item, canvas = self.objects[index], self.resolution * SUPERSAMPLE
        return (item.left + item.side / 2) / canvas, (item.top + item.side / 2) / canvas

    @property
    def identity(self) -> str:
        """A string that fixes the image and caption (its hash decides the split)."""
        boxes = ";".join(f"{o.shape},{o.color},{o.side},{o.left},{o.top}" for o in self.objects)
        return f"{self.spec.kind},{self.spec.relation},{int(self.size_words)},{self.resolution}:{boxes}"


def render_scene(scene: ComposeScene) -> Image.Image:
    """The scene's image: its shapes drawn at 4x on black and box-filtered down."""
    return render_shapes(scene.objects, scene.resolution)


def metadata_for(scene: ComposeScene) -> dict:
    """The json record stored next to each image (sizes and centres as fractions of the image side)."""
    canvas = scene.resolution * SUPERSAMPLE
    objects = []
    for index, item in enumerate(scene.objects):
        cx, cy = scene.centre(index)
        objects.append(
            {"color": item.color, "shape": item.shape, "size": item.size, "side": item.side / canvas,
             "cx": cx, "cy": cy}
        )  # fmt: skip
    return {
        "kind": scene.spec.kind,
        "relation": scene.spec.relation,
        "objects": objects,
        "size_words": scene.size_words,
        "width": scene.resolution,
        "height": scene.resolution,
    }


def _positions(
    rng: np.random.Generator,
    sides: list[int],
    canvas: int,
    relation: Optional[str],
    relation_sides: bool = False,
) -> Optional[list[tuple[int, int]]]:
    """(left, top) of each box, boxes inside the canvas and GAP apart, the relation holding between the
    first two (with ``relation_sides``, each of the two on its own side of the midline); None when some
    box found no place among _CANDIDATES tries."""
    gap = math.ceil(GAP * canvas)
    placed: list[tuple[int, int, int]] = []
    for index, side in enumerate(sides):
        lefts = rng.integers(0, canvas - side + 1, _CANDIDATES)
        tops = rng.integers(0, canvas - side + 1, _CANDIDATES)
        free = np.ones(_CANDIDATES, dtype=bool)
        if relation is not None and relation_sides and index < 2:
            centre = ((lefts + side / 2) / canvas, (tops + side / 2) / canvas)
            pair = ((0.5, 0.5), centre) if index else (centre, (0.5, 0.5))
            free &= relation_offsets(relation, *pair)[0] >= SIDE_MARGIN
        for left, top, other in placed:
            free &= (
                (lefts + side + gap <= left) | (left + other + gap <= lefts)
                | (tops + side + gap <= top) | (top + other + gap <= tops)
            )  # fmt: skip
        if relation is not None and placed:
            left, top, other = placed[0]
            first = ((left + other / 2) / canvas, (top + other / 2) / canvas)
            second = ((lefts + side / 2) / canvas, (tops + side / 2) / canvas)
            free &= relation_holds(relation, first, second, RELATION_MARGIN, RELATION_MAX_ANGLE)
        found = np.flatnonzero(free)
        if found.size == 0:
            return None
        placed.append((int(lefts[found[0]]), int(tops[found[0]]), side))
    return [(left, top) for left, top, _ in placed]


def _side(rng: np.random.Generator, size: str, canvas: int) -> int:
    low, high = SIZE_RANGES[size]
    return int(round((low + (high - low) * rng.random()) * canvas))


def place_scene(
    spec: SceneSpec,
    rng: np.random.Generator,
    resolution: int,
    size_words: bool = False,
    relation_sides: bool = False,
) -> ComposeScene:
    """Draw sizes (where the spec names none; a count scene's objects share one) and non-overlapping
    positions for a scene, its relation holding with a clear margin along the dominant axis (and with
    ``relation_sides``, its two objects on either side of the image's midline)."""
    shared = SIZES[rng.integers(len(SIZES))]
    sizes = [item.size or (shared if spec.kind == "count" else SIZES[rng.integers(len(SIZES))])
             for item in spec.objects]  # fmt: skip
    canvas = resolution * SUPERSAMPLE
    for _ in range(_MAX_TRIES):
        sides = [_side(rng, size, canvas) for size in sizes]
        positions = _positions(rng, sides, canvas, spec.relation, relation_sides)
        if positions is not None:
            break
    else:
        raise RuntimeError(f"found no placement for '{caption_of(spec)}' in {_MAX_TRIES} tries")
    objects = tuple(
        PlacedObject(item.color, item.shape, size, side, left, top)
        for item, size, side, (left, top) in zip(spec.objects, sizes, sides, positions, strict=True)
    )
    sized = SceneSpec(spec.kind, tuple(ObjectSpec(o.color, o.shape, o.size) for o in objects), spec.relation)
    return ComposeScene(sized, objects, resolution, size_words)


@dataclass(frozen=True)
class ComposeRules:
    """What a compose config allows in training: the seen pairs, the captions kept out, the mix."""

    seen: tuple[ObjectSpec, ...]
    excluded: frozenset[str]
    """Plain captions that no image may carry (the evaluator's prompts)."""
    weights: tuple[float, ...]
    """Probability of each kind (KINDS order)."""
    size_words: float
    relation_sides: bool = False
    relation_same_color: Optional[float] = None

    @classmethod
    def from_config(cls, config: ComposeConfig) -> ComposeRules:
        """Check a compose config and derive the rules (one-line ValueError for a bad value)."""
        mix = [getattr(config.task_mix, kind) for kind in KINDS]
        if min(mix) < 0 or sum(mix) <= 0:
            raise ValueError(f"data.compose.task_mix must be non-negative with a positive sum (got {mix})")
        if not 0 <= config.size_words <= 1:
            raise ValueError(f"data.compose.size_words must be in [0, 1] (got {config.size_words})")
        same = config.relation_same_color
        if same is not None and not 0 <= same <= 1:
            raise ValueError(f"data.compose.relation_same_color must be in [0, 1] or null (got {same})")
        try:
            seen = seen_pairs(config.held_out)
        except ValueError as error:
            raise ValueError(f"data.compose.held_out: {error}") from None
        return cls(
            seen=tuple(seen),
            excluded=evaluation_captions(config.held_out),
            weights=tuple(w / sum(mix) for w in mix),
            size_words=float(config.size_words),
            relation_sides=bool(config.relation_sides),
            relation_same_color=config.relation_same_color,
        )

    def draw_spec(self, kind: str, rng: np.random.Generator) -> SceneSpec:
        """A random scene of one kind from the seen pairs whose plain caption is not excluded."""
        for _ in range(_MAX_TRIES):
            first = self.seen[rng.integers(len(self.seen))]
            if kind == "single":
                spec = SceneSpec(kind, (first,))
            elif kind == "count":
                spec = SceneSpec(kind, (first,) * list(COUNT_WORDS)[rng.integers(len(COUNT_WORDS))])
            else:
                candidates = self.seen
                if kind == "relation" and self.relation_same_color is not None:
                    alike = rng.random() < self.relation_same_color
                    candidates = tuple(
                        o for o in self.seen if o != first and (o.color == first.color) == alike
                    )
                    if not candidates:
                        continue
                second = candidates[rng.integers(len(candidates))]
                if second == first:
                    continue
                relation = list(RELATIONS)[rng.integers(len(RELATIONS))] if kind == "relation" else None
                spec = SceneSpec(kind, (first, second), relation)
            if caption_of(spec) not in self.excluded:
                return spec
        raise RuntimeError(f"found no {kind} scene outside the evaluator's prompts in {_MAX_TRIES} draws")

    def draw_scene(self, rng: np.random.Generator, resolution: int) -> ComposeScene:
        """A random scene: its kind by the mix, then its objects, sizes, positions and caption form."""
        kind = KINDS[rng.choice(len(KINDS), p=self.weights)]
        spec = self.draw_spec(kind, rng)
        size_words = bool(rng.random() < self.size_words)
        return place_scene(spec, rng, resolution, size_words, self.relation_sides)


def _draw_scenes(
    rng: np.random.Generator, num: int, resolution: int, split: str, rules: ComposeRules
) -> list[ComposeScene]:
    """``num`` random scenes of one split (those whose hash puts them in it)."""
    scenes: list[ComposeScene] = []
    while len(scenes) < num:
        scene = rules.draw_scene(rng, resolution)
        if hashed_split(scene.identity) == split:
            scenes.append(scene)
    return scenes


def _sample(index: int, scene: ComposeScene) -> ShapeSample:
    """The sample of a scene, keyed by its index in the split."""
    return ShapeSample(
        key=f"{index:09d}", image=render_scene(scene), caption=scene.caption, metadata=metadata_for(scene)
    )


def generate_compose(
    num: int, *, resolution: int, seed: int, split: str = "train", compose: Optional[ComposeConfig] = None
) -> Iterator[ShapeSample]:
    """Render the first ``num`` samples of one split, exactly as ``write_compose_dataset`` writes them."""
    rng = split_rng(seed, split)
    check_count(num)
    _check(resolution, seed, 1, 0, 1)
    rules = ComposeRules.from_config(compose or ComposeConfig())
    for index, scene in enumerate(_draw_scenes(rng, num, resolution, split, rules)):
        yield _sample(index, scene)


def _check(resolution: int, seed: int, num_train: int, num_val: int, samples_per_shard: int) -> None:
    check_set_arguments(
        resolution=resolution, seed=seed, num_train=num_train, num_val=num_val,
        samples_per_shard=samples_per_shard, min_resolution=MIN_RESOLUTION,
    )  # fmt: skip


def _settings(compose: ComposeConfig) -> dict:
    """What fixes a compose set's images beyond its sizes and seed (recorded in its manifest)."""
    prompts = "\n".join(sorted(evaluation_captions(compose.held_out)))
    return {
        "world": "shapes_compose",
        "held_out": sorted(compose.held_out),
        "task_mix": asdict(compose.task_mix),
        "size_words": float(compose.size_words),
        **({"relation_sides": True} if compose.relation_sides else {}),
        **(
            {"relation_same_color": compose.relation_same_color}
            if compose.relation_same_color is not None
            else {}
        ),
        "excluded_prompts_sha1": hashlib.sha1(prompts.encode()).hexdigest(),
    }


def compose_folder(
    root: str | Path, *, resolution: int, seed: int, num_train: int, num_val: int, compose: ComposeConfig
) -> Path:
    """``{root}/{resolution}px-seed{seed}-n{num_train}-{num_val}-compose-{digest}``: the digest (8 hex
    digits) of the held-out pairs, mix, size words and excluded prompts, so that sets differing in any
    of them never share a folder."""
    digest = hashlib.sha1(json.dumps(_settings(compose), sort_keys=True).encode()).hexdigest()[:8]
    folder = set_folder(root, resolution=resolution, seed=seed, num_train=num_train, num_val=num_val)
    return folder.with_name(f"{folder.name}-compose-{digest}")


def write_compose_dataset(
    root: str | Path,
    *,
    resolution: int,
    seed: int,
    num_train: int,
    num_val: int,
    samples_per_shard: int,
    compose: Optional[ComposeConfig] = None,
) -> ShapesShards:
    """Write the compose set under ``root`` as tar shards (``compose_folder``), or reuse a complete copy."""
    compose = compose or ComposeConfig()
    _check(resolution, seed, num_train, num_val, samples_per_shard)
    rules = ComposeRules.from_config(compose)
    sizes = dict(resolution=resolution, seed=seed, num_train=num_train, num_val=num_val)
    manifest = {"version": _MANIFEST_VERSION, **sizes, "samples_per_shard": samples_per_shard,
                **_settings(compose)}  # fmt: skip

    def layouts_of(split: str, num: int) -> list[ComposeScene]:
        return _draw_scenes(split_rng(seed, split), num, resolution, split, rules)

    folder = compose_folder(root, **sizes, compose=compose)
    return write_synthetic_set(folder, manifest, layouts_of, _sample, "compose set")


def existing_compose_dataset(cfg: DataConfig) -> ShapesShards | None:
    """The compose set of a data config if a complete copy is on disk, else None (nothing is written)."""
    folder = compose_folder(cfg.root, **config_sizes(cfg), compose=cfg.compose)
    return existing_synthetic_set(folder, _MANIFEST_VERSION)


def ensure_compose_dataset(cfg: DataConfig) -> ShapesShards:
    """The compose set described by a data config, generated on first use."""
    return write_compose_dataset(
        cfg.root, **config_sizes(cfg), samples_per_shard=cfg.samples_per_shard, compose=cfg.compose
    )
