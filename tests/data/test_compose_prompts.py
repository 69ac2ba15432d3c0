"""Tests of the compose evaluator's prompt list (ldm/data/compose_prompts.py)."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from ldm.config import ComposeConfig
from ldm.data.compose_grammar import RELATIONS, parse_caption
from ldm.data.compose_prompts import (
    PROMPTS_PER_TASK,
    TASKS,
    evaluation_captions,
    evaluation_prompts,
    held_out_pairs,
    seen_pairs,
)

HELD_OUT = ComposeConfig().held_out


@pytest.fixture(scope="module")
def prompts():
    return evaluation_prompts(HELD_OUT)


def by_task(prompts) -> dict[str, list]:
    tasks: dict[str, list] = {}
    for prompt in prompts:
        tasks.setdefault(prompt.task, []).append(prompt.spec)
    return tasks


def test_sizes_and_order_of_the_tasks(prompts):
    tasks = by_task(prompts)
    assert list(tasks) == list(TASKS)
    assert {task: len(specs) for task, specs in tasks.items()} == {**PROMPTS_PER_TASK, "held_out_bindings": 8}
    assert sum(PROMPTS_PER_TASK.values()) == 40 and len(prompts) == 48
    texts = [p.text for p in prompts]
    assert len(set(texts)) == 48 and evaluation_captions(HELD_OUT) == frozenset(texts)
    for prompt in prompts:  # plain captions of the grammar
        assert parse_caption(prompt.text) == prompt.spec and all(o.size is None for o in prompt.spec.objects)


def test_each_task_asks_what_it_scores(prompts):
    tasks = by_task(prompts)
    hidden = set(HELD_OUT)
    for task, specs in tasks.items():
        if task != "held_out_bindings":
            assert all(hidden.isdisjoint(spec.bindings) for spec in specs), task
    assert {s.kind for s in tasks["single_object"] + tasks["colors"]} == {"single"}
    assert {s.objects[0].shape for s in tasks["single_object"]} == {"circle", "square", "triangle"}
    assert len({s.objects[0].color for s in tasks["colors"]}) == 4
    singles = [s.bindings[0] for s in tasks["single_object"] + tasks["colors"]]
    assert len(set(singles)) == 8  # eight different pairs: six seen pairs stay single scenes in training
    assert Counter(len(s.objects) for s in tasks["counting"]) == {2: 4, 3: 4}
    assert len({s.bindings[0] for s in tasks["counting"]}) == 8
    for spec in tasks["two_objects"]:
        assert spec.kind == "pair" and spec.objects[0].shape != spec.objects[1].shape
    for spec in tasks["color_attribution"] + tasks["position"]:
        a, b = spec.objects
        assert a.shape != b.shape and a.color != b.color
    assert {frozenset(s.bindings) for s in tasks["two_objects"]}.isdisjoint(
        frozenset(s.bindings) for s in tasks["color_attribution"]
    )
    assert Counter(s.relation for s in tasks["position"]) == {r: 2 for r in RELATIONS}
    held = tasks["held_out_bindings"]
    assert [s.kind for s in held] == ["single", "pair"] * 4
    for pair, (single, duo) in zip(HELD_OUT, zip(held[::2], held[1::2]), strict=True):
        assert single.bindings == (pair,) and duo.bindings[0] == pair and duo.bindings[1] not in hidden


def test_the_list_is_fixed(prompts):
    # Pinned: a change here changes which captions the compose set keeps out of training.
    first = {}
    for prompt in prompts:
        first.setdefault(prompt.task, prompt.text)
    assert first == {
        "single_object": "a blue triangle",
        "two_objects": "a cyan square and a cyan circle",
        "counting": "two red squares",
        "colors": "a magenta square",
        "position": "a cyan circle to the left of a green square",
        "color_attribution": "a red square and a green triangle",
        "held_out_bindings": "a red triangle",
    }
    every = "\n".join(prompt.text for prompt in prompts)
    assert hashlib.sha1(every.encode()).hexdigest() == "9448322003e39400a473104a75c2e5b2cb69c243"
    # The order of the held-out pairs changes only the order of their prompts.
    assert evaluation_captions(list(reversed(HELD_OUT))) == evaluation_captions(HELD_OUT)
    other = evaluation_captions(["cyan circle"])
    assert other != evaluation_captions(HELD_OUT) and "a cyan circle" in other


def test_seen_and_held_out_pairs():
    assert [p.binding for p in held_out_pairs(HELD_OUT)] == HELD_OUT
    seen = [p.binding for p in seen_pairs(HELD_OUT)]
    assert len(seen) == 14 and set(seen).isdisjoint(HELD_OUT) and seen[0] == "red circle"
    assert len(seen_pairs([])) == 18
    with pytest.raises(ValueError, match="at most 8"):
        held_out_pairs([f"{c} circle" for c in ("red", "green", "blue", "yellow", "magenta", "cyan")]
                       + ["red square", "green square", "blue square"])  # fmt: skip
    with pytest.raises(ValueError, match="held-out pairs repeat"):
        held_out_pairs(["red circle", "red circle"])
