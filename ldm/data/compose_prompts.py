"""The compose evaluator's prompts: a fixed list per task, a function of the held-out pairs alone.

The data module (``ldm.data.compose``) keeps every one of these plain captions out of the training
images, and the evaluator (``ldm.eval.compose``) samples them, so the model is scored on prompts it
never saw verbatim. The tasks follow GenEval (Ghosh et al. 2023) in this world:

    single_object      4 prompts  "a {color} {shape}"                  scored on the shape
    two_objects        8 prompts  "a A and a B", A and B of two shapes  scored on both shapes
    counting           8 prompts  "{two|three} {color} {shape}s"        four of each number
    colors             4 prompts  "a {color} {shape}"                  scored on colour and shape
    position           8 prompts  "a A {relation} a B"                 two per relation
    color_attribution  8 prompts  "a A and a B", two colours, two shapes
    held_out_bindings  2 per held-out pair: "a {pair}" and "a {pair} and a B"

Only pairs seen in training appear in the first six tasks. The choice among the candidates is a
fixed ranking (CRC-32 of the task and caption), spread over shapes and colours, so the list is the
same on every machine and every library version.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ldm.data.compose_grammar import RELATIONS, ObjectSpec, SceneSpec, caption_of, parse_binding
from ldm.data.shapes import COLORS, SHAPES

TASKS = (
    "single_object",
    "two_objects",
    "counting",
    "colors",
    "position",
    "color_attribution",
    "held_out_bindings",
)
"""The evaluator's tasks, in report order."""
PROMPTS_PER_TASK = {
    "single_object": 4,
    "two_objects": 8,
    "counting": 8,
    "colors": 4,
    "position": 8,
    "color_attribution": 8,
}
"""Prompts of each task but the held-out one, which has two per held-out pair."""
MIN_SEEN_PAIRS = 10
"""Colour-shape pairs that must stay in training: the 8 single prompts take 8 of them as single scenes."""

T = TypeVar("T")


@dataclass(frozen=True)
class EvalPrompt:
    """One prompt of the evaluator: its task and the scene it asks for."""

    task: str
    spec: SceneSpec

    @property
    def text(self) -> str:
        """The prompt, in the plain caption form."""
        return caption_of(self.spec)


def held_out_pairs(held_out: Sequence[str]) -> list[ObjectSpec]:
    """The held-out colour-shape pairs of a config ("red triangle"), checked: known, distinct, and few
    enough that at least MIN_SEEN_PAIRS pairs stay in training."""
    pairs = [parse_binding(text) for text in held_out]
    if len({p.binding for p in pairs}) != len(pairs):
        raise ValueError(f"held-out pairs repeat: {list(held_out)}")
    most = len(COLORS) * len(SHAPES) - MIN_SEEN_PAIRS
    if len(pairs) > most:
        raise ValueError(f"at most {most} colour-shape pairs can be held out, got {len(pairs)}")
    return pairs


def seen_pairs(held_out: Sequence[str]) -> list[ObjectSpec]:
    """Every colour-shape pair but the held-out ones, in the order of COLORS and SHAPES."""
    hidden = {p.binding for p in held_out_pairs(held_out)}
    return [ObjectSpec(c, s) for c in COLORS for s in SHAPES if f"{c} {s}" not in hidden]


def _ranked(candidates: list[SceneSpec], salt: str) -> list[SceneSpec]:
    """Candidates in a fixed pseudo-random order: by CRC-32 of the salt and the caption."""
    return sorted(
        candidates, key=lambda spec: (zlib.crc32(f"{salt}:{caption_of(spec)}".encode()), caption_of(spec))
    )


def _spread(ranked: list[T], n: int, key: Callable[[T], Hashable]) -> list[T]:
    """The first ``n`` of ``ranked``, skipping items whose key was already taken until every key has been."""
    chosen: list[T] = []
    remaining = list(ranked)
    taken: set[Hashable] = set()
    while len(chosen) < n and remaining:
        fresh = next((item for item in remaining if key(item) not in taken), None)
        if fresh is None:
            taken.clear()
            continue
        chosen.append(fresh)
        remaining.remove(fresh)
        taken.add(key(fresh))
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} candidate prompts where {n} are needed")
    return chosen


def _shapes_of(spec: SceneSpec) -> frozenset[str]:
    return frozenset(item.shape for item in spec.objects)


def evaluation_prompts(held_out: Sequence[str]) -> list[EvalPrompt]:
    """The evaluator's prompts, task by task (TASKS order), for these held-out pairs."""
    seen = seen_pairs(held_out)
    singles = _ranked([SceneSpec("single", (p,)) for p in seen], "single")
    single_object = _spread(singles, PROMPTS_PER_TASK["single_object"], lambda s: s.objects[0].shape)
    rest = [s for s in singles if s not in single_object]
    colors = _spread(rest, PROMPTS_PER_TASK["colors"], lambda s: s.objects[0].color)

    counted = _spread(_ranked([SceneSpec("single", (p,)) for p in seen], "counting"),
                      PROMPTS_PER_TASK["counting"], lambda s: s.objects[0].shape)  # fmt: skip
    counting = [SceneSpec("count", s.objects * (2 + i % 2)) for i, s in enumerate(counted)]

    ordered = [(a, b) for a in seen for b in seen if a.shape != b.shape]
    pairs = _ranked([SceneSpec("pair", ab) for ab in ordered], "two_objects")
    two_objects = _spread(pairs, PROMPTS_PER_TASK["two_objects"], _shapes_of)
    taken = {frozenset(s.bindings) for s in two_objects}
    distinct = [SceneSpec("pair", (a, b)) for a, b in ordered if a.color != b.color]
    distinct = [s for s in distinct if frozenset(s.bindings) not in taken]
    attribution = _spread(
        _ranked(distinct, "color_attribution"), PROMPTS_PER_TASK["color_attribution"], _shapes_of
    )

    per_relation = PROMPTS_PER_TASK["position"] // len(RELATIONS)
    position = []
    for relation in RELATIONS:
        candidates = [SceneSpec("relation", (a, b), relation) for a, b in ordered if a.color != b.color]
        position += _spread(_ranked(candidates, f"position:{relation}"), per_relation, _shapes_of)

    held = []
    for pair in held_out_pairs(held_out):
        partners = [
            SceneSpec("pair", (pair, p)) for p in seen if p.color != pair.color and p.shape != pair.shape
        ]
        held += [SceneSpec("single", (pair,)), _ranked(partners, f"held_out:{pair.binding}")[0]]

    tasks = {
        "single_object": single_object,
        "two_objects": two_objects,
        "counting": counting,
        "colors": colors,
        "position": position,
        "color_attribution": attribution,
        "held_out_bindings": held,
    }
    return [EvalPrompt(task, spec) for task in TASKS for spec in tasks[task]]


def evaluation_captions(held_out: Sequence[str]) -> frozenset[str]:
    """The evaluator's prompts as plain captions: what the training images never carry."""
    return frozenset(prompt.text for prompt in evaluation_prompts(held_out))
