"""The caption grammar of the compose world: scene specifications, their captions, and back.

A scene is one of four kinds, each with a plain caption form that anyone can prompt with:

    single     a {color} {shape}
    count      {two|three} {color} {shape}s                       (all objects alike)
    pair       a {color} {shape} and a {color} {shape}
    relation   a {color} {shape} {to the left of|to the right of|above|below} a {color} {shape}

and a variant with a size word before each colour ("a small red circle and a large blue square",
"three small green squares"). A relation holds between the two objects' centres (image rows grow
downwards): "A to the left of B" means B's centre lies to the right of A's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Optional

from ldm.data.shapes import COLORS, SHAPES

KINDS = ("single", "count", "pair", "relation")
"""The kinds of scene, in the order of ComposeTaskMix's fields."""
SIZES = ("small", "large")
"""The size words."""
COUNT_WORDS = {2: "two", 3: "three"}
"""How many objects a count scene has, and the word for it."""
RELATIONS = {
    "to the left of": (0, 1),
    "to the right of": (0, -1),
    "above": (1, 1),
    "below": (1, -1),
}
"""Relation -> (axis of the centres, 0: x or 1: y; sign of B's centre minus A's along it)."""
Point = tuple[Any, Any]
"""(x, y) of a centre, as fractions of the image side (floats, or numpy arrays of many)."""


@dataclass(frozen=True)
class ObjectSpec:
    """One object a caption names: its colour, shape and, when the caption says it, its size."""

    color: str
    shape: str
    size: Optional[str] = None
    """small, large, or None when not named."""

    @property
    def binding(self) -> str:
        """Its colour-shape pair, as the config names held-out pairs: "red triangle"."""
        return f"{self.color} {self.shape}"

    def words(self) -> str:
        """ "red circle" or "small red circle"."""
        return f"{self.size} {self.binding}" if self.size else self.binding


@dataclass(frozen=True)
class SceneSpec:
    """What a caption asks for: the kind of scene, its objects (a count scene repeats one) and the
    relation of the first object to the second (relation scenes only)."""

    kind: str
    objects: tuple[ObjectSpec, ...]
    relation: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind of scene '{self.kind}'; available: {', '.join(KINDS)}")
        for item in self.objects:
            if item.color not in COLORS:
                raise ValueError(f"unknown colour '{item.color}'; available: {', '.join(COLORS)}")
            if item.shape not in SHAPES:
                raise ValueError(f"unknown shape '{item.shape}'; available: {', '.join(SHAPES)}")
            if item.size is not None and item.size not in SIZES:
                raise ValueError(f"unknown size '{item.size}'; available: {', '.join(SIZES)}")
        counts = {"single": (1,), "count": tuple(COUNT_WORDS), "pair": (2,), "relation": (2,)}[self.kind]
        if len(self.objects) not in counts:
            raise ValueError(f"a {self.kind} scene has {counts} objects, got {len(self.objects)}")
        if self.kind == "count" and len(set(self.objects)) != 1:
            raise ValueError("the objects of a count scene must be alike (colour, shape and size)")
        if self.kind in ("pair", "relation") and self.objects[0].binding == self.objects[1].binding:
            raise ValueError("the two objects of a pair or relation scene must differ in colour or shape")
        if (self.relation is not None) != (self.kind == "relation"):
            raise ValueError(
                f"a relation is given exactly for relation scenes, got {self.relation} for {self.kind}"
            )
        if self.relation is not None and self.relation not in RELATIONS:
            raise ValueError(f"unknown relation '{self.relation}'; available: {', '.join(RELATIONS)}")

    def plain(self) -> SceneSpec:
        """The same scene without size words."""
        return replace(self, objects=tuple(replace(item, size=None) for item in self.objects))

    @property
    def bindings(self) -> tuple[str, ...]:
        """The colour-shape pairs it shows, e.g. ("red circle", "blue square")."""
        return tuple(item.binding for item in self.objects)


def caption_of(spec: SceneSpec) -> str:
    """The caption of a scene in the grammar (with size words where its objects have sizes)."""
    first = spec.objects[0]
    if spec.kind == "count":
        return f"{COUNT_WORDS[len(spec.objects)]} {first.words()}s"
    if spec.kind == "single":
        return f"a {first.words()}"
    joint = "and" if spec.kind == "pair" else spec.relation
    return f"a {first.words()} {joint} a {spec.objects[1].words()}"


_OBJECT = rf"(?:({'|'.join(SIZES)}) )?({'|'.join(COLORS)}) ({'|'.join(SHAPES)})"
_PATTERNS = {
    "count": re.compile(rf"({'|'.join(COUNT_WORDS.values())}) {_OBJECT}s"),
    "single": re.compile(rf"a {_OBJECT}"),
    "pair": re.compile(rf"a {_OBJECT} and a {_OBJECT}"),
    "relation": re.compile(rf"a {_OBJECT} ({'|'.join(RELATIONS)}) a {_OBJECT}"),
}


def parse_caption(caption: str) -> SceneSpec:
    """The scene a caption of the grammar asks for (ValueError for text outside the grammar)."""
    for kind, pattern in _PATTERNS.items():
        match = pattern.fullmatch(caption)
        if match is None:
            continue
        groups = match.groups()
        if kind == "count":
            number = next(n for n, word in COUNT_WORDS.items() if word == groups[0])
            return SceneSpec(kind, (ObjectSpec(groups[2], groups[3], groups[1]),) * number)
        first = ObjectSpec(groups[1], groups[2], groups[0])
        if kind == "single":
            return SceneSpec(kind, (first,))
        if kind == "pair":
            return SceneSpec(kind, (first, ObjectSpec(groups[4], groups[5], groups[3])))
        return SceneSpec(kind, (first, ObjectSpec(groups[5], groups[6], groups[4])), relation=groups[3])
    raise ValueError(f"'{caption}' is not a caption of the compose grammar")


def relation_offsets(relation: str, first: Point, second: Point) -> tuple[Any, Any]:
    """(along, across): how far the second centre (x, y) lies from the first in the relation's direction
    (positive when the relation holds), and how far across it. Coordinates may be numpy arrays."""
    axis, sign = RELATIONS[relation]
    along = sign * (second[axis] - first[axis])
    return along, abs(second[1 - axis] - first[1 - axis])


def relation_holds(relation: str, first: Point, second: Point, margin: float, max_angle: float) -> Any:
    """Whether the first centre stands in ``relation`` to the second: at least ``margin`` apart along the
    relation's axis, and the offset within ``max_angle`` degrees of the relation's direction (a bool, or
    a boolean array for arrays of centres)."""
    along, across = relation_offsets(relation, first, second)
    return (along >= margin) & (across <= along * math.tan(math.radians(max_angle)))


def parse_binding(text: str) -> ObjectSpec:
    """A colour-shape pair as the config writes it, "red triangle", as an object (ValueError otherwise)."""
    words = text.split()
    if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
        raise ValueError(
            f"'{text}' is not a colour-shape pair such as 'red triangle' (colours: {', '.join(COLORS)}; "
            f"shapes: {', '.join(SHAPES)})"
        )
    return ObjectSpec(words[0], words[1])
