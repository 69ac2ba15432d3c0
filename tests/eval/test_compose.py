"""Tests of the compose evaluator (ldm/eval/compose.py): rendered ground truth scores 100%, wrong
renderings and noise 0%, the task rules on hand-made detections, and the command line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from ldm.config import ComposeConfig
from ldm.data.compose import place_scene, render_scene
from ldm.data.compose_grammar import ObjectSpec, SceneSpec
from ldm.data.compose_prompts import TASKS, EvalPrompt, evaluation_prompts
from ldm.data.shapes import COLORS, SHAPES
from ldm.eval.compose import ComposeScore, held_out_of_run, judge, score_compose
from ldm.eval.detect import DetectedObject
from tests.conftest import run_cli, save_tiny_latent_diffusion
from tests.eval.test_shapes import degrade

PROMPTS = evaluation_prompts(ComposeConfig().held_out)
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
            "below": "above"}  # fmt: skip
TURNED = {"to the left of": "above", "to the right of": "below", "above": "to the right of",
          "below": "to the left of"}  # fmt: skip


def rendered(specs: list[SceneSpec], resolution: int, per_spec: int, seed: int = 0) -> list[Image.Image]:
    """``per_spec`` renderings of each spec (random sizes and places), spec by spec."""
    rng = np.random.default_rng(seed)
    return [render_scene(place_scene(spec, rng, resolution)) for spec in specs for _ in range(per_spec)]


def other(values, value: str) -> str:
    """The next value after ``value`` in ``values`` (cyclic): a different colour or shape."""
    values = list(values)
    return values[(values.index(value) + 1) % len(values)]


def mislabelled(prompt: EvalPrompt) -> SceneSpec:
    """A scene that the prompt's task must judge wrong: one thing the task scores is changed."""
    spec, objects = prompt.spec, list(prompt.spec.objects)
    first = objects[0]
    if prompt.task == "single_object":
        return SceneSpec("single", (dataclasses.replace(first, shape=other(SHAPES, first.shape)),))
    if prompt.task == "colors":
        return SceneSpec("single", (dataclasses.replace(first, color=other(COLORS, first.color)),))
    if prompt.task == "counting":
        return SceneSpec("count", (first,) * (5 - len(objects)))  # three for two, two for three
    if prompt.task == "two_objects":  # the second shape replaced by the third one
        third = next(s for s in SHAPES if s not in (first.shape, objects[1].shape))
        return SceneSpec("pair", (first, dataclasses.replace(objects[1], shape=third)))
    if prompt.task == "position":
        return dataclasses.replace(spec, relation=OPPOSITE[spec.relation])
    # color_attribution and held_out_bindings: the colours swapped between the objects (a single
    # held-out prompt gets the other colour of the pair).
    if len(objects) == 1:
        return SceneSpec("single", (dataclasses.replace(first, color=other(COLORS, first.color)),))
    a, b = objects
    return SceneSpec("pair", (ObjectSpec(b.color, a.shape), ObjectSpec(a.color, b.shape)))


@pytest.mark.parametrize("resolution", [64, 32])
def test_renderings_of_each_prompt_score_100_percent(resolution):
    per_prompt = 4
    images = rendered([p.spec for p in PROMPTS], resolution, per_prompt)
    score = score_compose(images, [p for p in PROMPTS for _ in range(per_prompt)])
    assert score.n == 48 * per_prompt and list(score.tasks) == list(TASKS)
    assert {task: entry["accuracy"] for task, entry in score.tasks.items()} == {task: 1.0 for task in TASKS}
    assert score.overall == 1.0
    assert all(entry["accuracy"] == 1.0 and entry["n"] == per_prompt for entry in score.per_prompt.values())


@pytest.mark.parametrize("resolution", [64, 32])
def test_mildly_blurred_and_noisy_renderings_still_score(resolution):
    # Blur of 0.5 px and noise of 3% at 32 px, scaled with the resolution, like a slightly soft decoder.
    per_prompt = 4
    rng = np.random.default_rng(3)
    images = [degrade(image, 0.5 * resolution / 32, 0.03, rng)
              for image in rendered([p.spec for p in PROMPTS], resolution, per_prompt, seed=3)]  # fmt: skip
    score = score_compose(images, [p for p in PROMPTS for _ in range(per_prompt)])
    # Measured over 20 renderings per prompt: 1.0 at 64 px, 0.999 at 32 px (one two-objects miss in 960).
    assert score.overall >= 0.99 and min(entry["accuracy"] for entry in score.tasks.values()) >= 0.96


@pytest.mark.parametrize("resolution", [64, 32])
def test_mislabelled_renderings_score_0_percent(resolution):
    per_prompt = 4
    images = rendered([mislabelled(p) for p in PROMPTS], resolution, per_prompt, seed=1)
    score = score_compose(images, [p for p in PROMPTS for _ in range(per_prompt)])
    assert {task: entry["accuracy"] for task, entry in score.tasks.items()} == {task: 0.0 for task in TASKS}
    assert score.overall == 0.0


def test_positions_turned_a_quarter_score_0_percent():
    position = [p for p in PROMPTS if p.task == "position"]
    turned = [dataclasses.replace(p.spec, relation=TURNED[p.spec.relation]) for p in position]
    score = score_compose(rendered(turned, 64, 8, seed=2), [p for p in position for _ in range(8)])
    assert score.tasks["position"]["accuracy"] == 0.0


def test_noise_scores_0_percent():
    rng = np.random.default_rng(0)
    uniform = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in PROMPTS]
    # Smooth colour noise: random colours on an 8x8 grid, upsampled: large blobs of mixed hues.
    blobs = [np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64)))
             for _ in PROMPTS]  # fmt: skip
    for images in (uniform, blobs):
        score = score_compose(images, PROMPTS)
        assert score.overall == 0.0


def obj(binding: str, cx: float = 0.5, cy: float = 0.5) -> DetectedObject:
    color, shape = binding.split()
    return DetectedObject(color, shape, cx, cy, area=0.05)


def prompt(task: str, *bindings: str, relation: str | None = None) -> EvalPrompt:
    objects = tuple(ObjectSpec(*b.split()) for b in bindings)
    kind = {1: "single", 2: "relation" if relation else "pair", 3: "count"}[len(objects)]
    if task == "counting":
        kind = "count"
    return EvalPrompt(task, SceneSpec(kind, objects, relation))


def test_task_rules_on_detections():
    assert judge([obj("blue circle")], prompt("single_object", "red circle"))  # colour not judged
    assert not judge([obj("red circle"), obj("red square")], prompt("single_object", "red circle"))
    assert not judge([obj("blue circle")], prompt("colors", "red circle"))
    assert judge([obj("red circle")], prompt("colors", "red circle"))
    two = prompt("two_objects", "red circle", "blue square")
    assert judge([obj("green square"), obj("green circle")], two)
    assert not judge([obj("red circle"), obj("blue circle")], two)
    assert not judge([obj("red circle"), obj("blue square"), obj("cyan triangle")], two)
    three = prompt("counting", "red circle", "red circle", "red circle")
    assert judge([obj("red circle")] * 3, three)
    assert not judge([obj("red circle")] * 2, three) and not judge([obj("red circle")] * 4, three)
    assert not judge([obj("red circle")] * 2 + [obj("red square")], three)
    colours = prompt("color_attribution", "red circle", "blue square")
    assert judge([obj("blue square"), obj("red circle")], colours)
    assert not judge([obj("blue circle"), obj("red square")], colours)
    above = prompt("position", "red circle", "blue square", relation="above")
    assert judge([obj("red circle", 0.5, 0.2), obj("blue square", 0.6, 0.7)], above)
    assert not judge([obj("red circle", 0.5, 0.7), obj("blue square", 0.6, 0.2)], above)  # below
    assert not judge([obj("red circle", 0.2, 0.4), obj("blue square", 0.8, 0.5)], above)  # 80 degrees off
    assert not judge([obj("red circle", 0.5, 0.48), obj("blue square", 0.5, 0.5)], above)  # within the margin
    assert not judge([obj("red circle", 0.5, 0.2), obj("blue circle", 0.6, 0.7)], above)  # wrong shape


def test_score_tallies_and_rejects_bad_input():
    red = prompt("colors", "red circle")
    blue = prompt("single_object", "blue square")
    hit, miss = np.zeros((64, 64, 3), dtype=np.uint8), np.zeros((64, 64, 3), dtype=np.uint8)
    hit[10:30, 10:30] = COLORS["blue"]
    score = score_compose([hit, miss, hit], [blue, blue, red])
    assert score.tasks == {"single_object": {"accuracy": 0.5, "n": 2, "prompts": 1},
                           "colors": {"accuracy": 0.0, "n": 1, "prompts": 1}}  # fmt: skip
    assert score.overall == 0.25 and score.n == 3
    assert score.per_prompt["a blue square"] == {"task": "single_object", "n": 2, "accuracy": 0.5}
    assert json.loads(json.dumps(score.to_dict()))["overall"] == 0.25
    assert isinstance(score, ComposeScore)
    with pytest.raises(ValueError, match="the counts must match"):
        score_compose([hit], [])
    with pytest.raises(ValueError, match="no images"):
        score_compose([], [])
    with pytest.raises(ValueError, match="is in two tasks"):
        score_compose([hit, hit], [red, prompt("single_object", "red circle")])


def test_held_out_pairs_come_from_the_run_config(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    assert held_out_of_run(ckpt) == ComposeConfig().held_out  # no config.yaml
    config = tmp_path / "run" / "config.yaml"
    config.write_text("data:\n  name: shapes_compose\n  compose:\n    held_out: [cyan circle]\n")
    assert held_out_of_run(ckpt) == ["cyan circle"]
    config.write_text("data:\n  name: shapes\n")
    assert held_out_of_run(ckpt) == ComposeConfig().held_out


def test_eval_cli_compose_suite(tmp_path):
    ckpt = save_tiny_latent_diffusion(tmp_path / "last.ckpt", seed=0)
    out = tmp_path / "eval.json"
    args = [
        "-m",
        "ldm.eval",
        "--ckpt",
        str(ckpt),
        "--suite",
        "compose",
        "--n_per_prompt",
        "1",
        "--steps",
        "2",
    ]
    result = run_cli([*args, "--device", "cpu", "--out", str(out), "--grid", str(tmp_path / "g.png")])
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    saved = json.loads(out.read_text())
    assert summary["n"] == saved["n"] == 48 and summary["sampler"]["steps"] == 2
    assert list(saved["tasks"]) == list(TASKS) and saved["suite"] == "compose"
    assert [entry["n"] for entry in saved["per_prompt"].values()] == [1] * 48
    assert list(saved["per_prompt"]) == [p.text for p in PROMPTS]
    for task in TASKS:
        entries = [e for e in saved["per_prompt"].values() if e["task"] == task]
        assert (
            summary[task]
            == saved["tasks"][task]["accuracy"]
            == pytest.approx(sum(e["accuracy"] for e in entries) / len(entries))
        )
    assert summary["overall"] == pytest.approx(sum(summary[t] for t in TASKS) / len(TASKS))
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.size == (1 * 33 + 1, 48 * 33 + 1)  # 48 rows of one 32 px sample, 1 px padding
