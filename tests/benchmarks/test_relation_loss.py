"""benchmarks/relation_loss.py: the loss with the true, flipped and swapped captions, and the layout bound."""

from __future__ import annotations

import json

import pytest
import torch

from ldm.data.compose import ComposeScene, PlacedObject
from ldm.data.compose_grammar import RELATIONS, ObjectSpec, SceneSpec, parse_caption, relation_holds
from ldm.pipeline import load_module
from tests.conftest import save_tiny_latent_diffusion


def test_flipped_captions_are_false_and_swapped_ones_exchange_the_colours(load_benchmark):
    bench = load_benchmark("relation_loss")
    scenes = bench.relation_scenes(16, resolution=64, seed=0, held_out=["red triangle"])
    assert [s.spec.relation for s in scenes[:4]] == list(RELATIONS)
    for scene in scenes:
        trial = bench.trial_of(scene)
        first, second = scene.centre(0), scene.centre(1)
        assert parse_caption(trial.true).relation == scene.spec.relation
        assert relation_holds(scene.spec.relation, first, second, margin=0.15, max_angle=26.6)
        flipped = parse_caption(trial.flipped)
        assert not relation_holds(flipped.relation, first, second, margin=0.0, max_angle=90.0)
        swapped = parse_caption(trial.swapped)
        a, b = scene.spec.objects
        assert [(o.color, o.shape) for o in swapped.objects] == [(b.color, a.shape), (a.color, b.shape)]
        assert "red triangle" not in trial.true + trial.swapped


def _scene(relation: str, a_left: int, b_left: int) -> ComposeScene:
    """Two boxes of side 32 on a 64 px canvas (256 supersampled units) in one row."""
    spec = SceneSpec("relation", (ObjectSpec("red", "circle"), ObjectSpec("blue", "square")), relation)
    objects = (
        PlacedObject("red", "circle", "small", 32, a_left, 96),
        PlacedObject("blue", "square", "small", 32, b_left, 96),
    )
    return ComposeScene(spec, objects, resolution=64, size_words=False)


def test_layout_share_is_one_when_the_word_fixes_the_layout_and_zero_when_it_says_nothing(load_benchmark):
    bench = load_benchmark("relation_loss")
    determined = [_scene("to the left of", 16, 200), _scene("to the right of", 200, 16)] * 3
    assert bench.layout_share(determined) == pytest.approx(1.0)
    # Each relation labels both layouts equally often: its mean is the pooled mean.
    uninformative = [
        _scene(r, *x) for r in ("to the left of", "to the right of") for x in ((16, 200), (200, 16))
    ]
    assert bench.layout_share(uninformative) == pytest.approx(0.0)
    # Half determined: of four scenes per relation, three in the relation's layout, one in the other's.
    mixed = [_scene("to the left of", 16, 200)] * 3 + [_scene("to the left of", 200, 16)]
    mixed += [_scene("to the right of", 200, 16)] * 3 + [_scene("to the right of", 16, 200)]
    # The group means are 3/4 and 1/4 of a box where the pooled mean is 1/2: between-group share 1/4.
    assert bench.layout_share(mixed) == pytest.approx(0.25)


class _TextBlind(torch.nn.Module):
    """A text encoder that gives every caption the same states."""

    def __init__(self, states: torch.Tensor):
        super().__init__()
        self.states = states

    def forward(self, captions: list[str]) -> torch.Tensor:
        return self.states.expand(len(captions), -1, -1)


def test_a_text_blind_network_scores_every_caption_the_same(load_benchmark, tmp_path):
    bench = load_benchmark("relation_loss")
    module = load_module(save_tiny_latent_diffusion(tmp_path / "tiny.ckpt", seed=0), "cpu", task="none")
    with torch.no_grad():  # SD's zero-initialised output layers would leave the text unread
        for p in module.model.diffusion_model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(std=0.05)
    trials = [bench.trial_of(s) for s in bench.relation_scenes(8, resolution=32, seed=1)]
    result = bench.losses(module, trials, timesteps=[500], repeats=2, seed=0)["500"]
    assert result["flipped_over_true"] != 1.0  # the tiny network reads its random text states
    module.cond_stage_model = _TextBlind(module.cond_stage_model(["a red circle"]))
    result = bench.losses(module, trials, timesteps=[500], repeats=2, seed=0)["500"]
    assert result["flipped_over_true"] == 1.0 and result["swapped_over_true"] == 1.0
    assert result["true_below_flipped"] == 0.0  # equal losses are not lower


def test_a_run_writes_every_timestep(load_benchmark, tmp_path, capsys):
    bench = load_benchmark("relation_loss")
    ckpt = save_tiny_latent_diffusion(tmp_path / "tiny.ckpt", seed=0)
    out = tmp_path / "loss.json"
    argv = ["--ckpt", str(ckpt), "--scenes", "4", "--timesteps", "10", "990", "--repeats", "1"]
    bench.main(argv + ["--layout-scenes", "40", "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert list(result["timesteps"]) == ["10", "990"] and result["parameterization"] == "eps"
    assert 0 < result["layout_share"] < 1
    assert all(row["true"] > 0 for row in result["timesteps"].values())
    assert "flipped/true" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--timesteps"):
        bench.main(["--ckpt", str(ckpt), "--timesteps", "1000", "--device", "cpu"])


def test_the_module_is_left_unchanged(load_benchmark, tmp_path):
    bench = load_benchmark("relation_loss")
    module = load_module(save_tiny_latent_diffusion(tmp_path / "tiny.ckpt", seed=0), "cpu", task="none")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    bench.losses(module, [bench.trial_of(s) for s in bench.relation_scenes(2, 32, seed=0)], [100], 1, seed=0)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
