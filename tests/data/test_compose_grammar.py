"""Tests of the compose caption grammar (ldm/data/compose_grammar.py)."""

from __future__ import annotations

import itertools

import pytest

from ldm.data.compose_grammar import (
    RELATIONS,
    ObjectSpec,
    SceneSpec,
    caption_of,
    parse_binding,
    parse_caption,
    relation_holds,
    relation_offsets,
)
from ldm.data.shapes import COLORS, SHAPES

RED_CIRCLE, BLUE_SQUARE = ObjectSpec("red", "circle"), ObjectSpec("blue", "square")


@pytest.mark.parametrize(
    ("caption", "spec"),
    [
        ("a red circle", SceneSpec("single", (RED_CIRCLE,))),
        ("a large red circle", SceneSpec("single", (ObjectSpec("red", "circle", "large"),))),
        ("two red circles", SceneSpec("count", (RED_CIRCLE,) * 2)),
        ("three small cyan triangles", SceneSpec("count", (ObjectSpec("cyan", "triangle", "small"),) * 3)),
        ("a red circle and a blue square", SceneSpec("pair", (RED_CIRCLE, BLUE_SQUARE))),
        ("a small red circle and a large blue square",
         SceneSpec("pair", (ObjectSpec("red", "circle", "small"), ObjectSpec("blue", "square", "large")))),
        ("a red circle to the left of a blue square",
         SceneSpec("relation", (RED_CIRCLE, BLUE_SQUARE), "to the left of")),
        ("a blue square below a red circle", SceneSpec("relation", (BLUE_SQUARE, RED_CIRCLE), "below")),
        ("a magenta triangle to the right of a small yellow square",
         SceneSpec("relation", (ObjectSpec("magenta", "triangle"), ObjectSpec("yellow", "square", "small")),
                   "to the right of")),
    ],
)  # fmt: skip
def test_captions_and_specs_correspond(caption, spec):
    assert caption_of(spec) == caption
    assert parse_caption(caption) == spec


def test_every_plain_caption_round_trips():
    objects = [ObjectSpec(c, s) for c in COLORS for s in SHAPES]
    specs = [SceneSpec("single", (o,)) for o in objects]
    specs += [SceneSpec("count", (o,) * n) for o in objects for n in (2, 3)]
    for a, b in itertools.permutations(objects, 2):
        specs.append(SceneSpec("pair", (a, b)))
        specs += [SceneSpec("relation", (a, b), r) for r in RELATIONS]
    captions = [caption_of(spec) for spec in specs]
    assert len(set(captions)) == len(specs) == 18 + 36 + 306 * 5
    for spec, caption in zip(specs, captions, strict=True):
        assert parse_caption(caption) == spec
    # The sized variants too, and the plain form drops exactly the size words.
    sized = SceneSpec(
        "relation", (ObjectSpec("red", "circle", "small"), ObjectSpec("green", "square", "large")), "above"
    )
    assert caption_of(sized) == "a small red circle above a large green square"
    assert caption_of(sized.plain()) == "a red circle above a green square"
    assert parse_caption(caption_of(sized)) == sized


@pytest.mark.parametrize(
    "caption",
    ["a red circle ", "A red circle", "a purple circle", "a red star", "four red circles", "two red circle",
     "a red circle and a", "a red circle next to a blue square", "a medium red circle", "red circle"],
)  # fmt: skip
def test_text_outside_the_grammar_is_refused(caption):
    with pytest.raises(ValueError, match="is not a caption of the compose grammar"):
        parse_caption(caption)


@pytest.mark.parametrize(
    ("kind", "objects", "relation", "message"),
    [
        ("triple", (RED_CIRCLE,), None, "unknown kind of scene 'triple'"),
        ("single", (ObjectSpec("purple", "circle"),), None, "unknown colour 'purple'"),
        ("single", (ObjectSpec("red", "star"),), None, "unknown shape 'star'"),
        ("single", (ObjectSpec("red", "circle", "medium"),), None, "unknown size 'medium'"),
        ("single", (RED_CIRCLE, BLUE_SQUARE), None, "a single scene has"),
        ("count", (RED_CIRCLE,) * 4, None, "a count scene has"),
        ("count", (RED_CIRCLE, ObjectSpec("red", "circle", "small")), None, "must be alike"),
        ("pair", (RED_CIRCLE, ObjectSpec("red", "circle", "small")), None, "must differ in colour or shape"),
        ("pair", (RED_CIRCLE, BLUE_SQUARE), "above", "a relation is given exactly for relation scenes"),
        ("relation", (RED_CIRCLE, BLUE_SQUARE), None, "a relation is given exactly for relation scenes"),
        ("relation", (RED_CIRCLE, BLUE_SQUARE), "near", "unknown relation 'near'"),
    ],
)
def test_impossible_scenes_are_refused(kind, objects, relation, message):
    with pytest.raises(ValueError, match=message):
        SceneSpec(kind, objects, relation)


def test_relations_between_centres():
    # Image rows grow downwards: "above" means a smaller y.
    left, right, top = (0.2, 0.5), (0.7, 0.6), (0.45, 0.1)
    assert relation_offsets("to the left of", left, right) == pytest.approx((0.5, 0.1))
    assert relation_offsets("to the right of", right, left) == pytest.approx((0.5, 0.1))
    assert relation_offsets("above", top, left) == pytest.approx((0.4, 0.25))
    assert relation_offsets("below", left, top) == pytest.approx((0.4, 0.25))
    assert relation_holds("to the left of", left, right, margin=0.15, max_angle=30)
    assert not relation_holds("to the right of", left, right, margin=0.15, max_angle=30)
    assert not relation_holds("to the left of", left, right, margin=0.6, max_angle=30)
    # atan(0.25 / 0.4) = 32.0 degrees: inside 35, outside 30.
    assert relation_holds("above", top, left, margin=0.1, max_angle=35)
    assert not relation_holds("above", top, left, margin=0.1, max_angle=30)


def test_bindings():
    assert parse_binding("red triangle") == ObjectSpec("red", "triangle")
    assert SceneSpec("pair", (RED_CIRCLE, BLUE_SQUARE)).bindings == ("red circle", "blue square")
    for text in ("red", "red  triangle x", "purple triangle", "red star"):
        with pytest.raises(ValueError, match="is not a colour-shape pair"):
            parse_binding(text)
