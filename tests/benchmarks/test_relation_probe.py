"""benchmarks/relation_probe.py: B-minus-A offsets along each relation's axis, on rendered scenes and a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ldm.data.compose import place_scene, render_scene
from ldm.data.compose_grammar import RELATIONS, ObjectSpec, SceneSpec
from ldm.eval.detect import detect_objects
from tests.conftest import save_tiny_latent_diffusion


@pytest.mark.parametrize("relation", list(RELATIONS))
def test_rendered_scenes_give_the_relations_sign(load_benchmark, relation):
    probe = load_benchmark("relation_probe")
    rng = np.random.default_rng(0)
    sign = RELATIONS[relation][1]
    for first, second in probe.PAIRS:
        a, b = (ObjectSpec(*pair.split()) for pair in (first, second))
        scene = place_scene(SceneSpec("relation", (a, b), relation), rng, resolution=64)
        offset = probe.axis_offset(detect_objects(np.asarray(render_scene(scene))), first, second, relation)
        # The world's margin between box centres, less a pixel for each detected box's edge.
        assert offset is not None and sign * offset >= 0.15 - 2 / 64


def test_missing_or_repeated_objects_are_left_out(load_benchmark):
    probe = load_benchmark("relation_probe")
    a, b = ObjectSpec("cyan", "circle"), ObjectSpec("green", "square")
    scene = place_scene(SceneSpec("pair", (a, ObjectSpec("cyan", "square"))), np.random.default_rng(1), 64)
    objects = detect_objects(np.asarray(render_scene(scene)))
    assert probe.axis_offset(objects, a.binding, b.binding, "above") is None


def test_summary_of_known_offsets(load_benchmark):
    probe = load_benchmark("relation_probe")
    row = probe.summary([0.2, -0.1, 0.3, 0.0], missed=2)
    assert row["n"] == 4 and row["missed"] == 2
    assert row["mean"] == pytest.approx(0.1) and row["positive"] == pytest.approx(0.5)
    assert row["std"] == pytest.approx(np.std([0.2, -0.1, 0.3, 0.0]))
    assert probe.summary([], missed=3) == {"n": 0, "mean": None, "std": None, "positive": None, "missed": 3}


def test_a_run_counts_every_sample(load_benchmark, tmp_path, capsys):
    probe = load_benchmark("relation_probe")
    ckpt = save_tiny_latent_diffusion(tmp_path / "tiny.ckpt", seed=0)
    out = tmp_path / "probe.json"
    probe.main(["--ckpt", str(ckpt), "--seeds", "2", "--steps", "1", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert list(result["relations"]) == list(RELATIONS)
    for row in result["relations"].values():
        assert row["n"] + row["missed"] == 2 * len(probe.PAIRS)
    assert "to the left of" in capsys.readouterr().out
