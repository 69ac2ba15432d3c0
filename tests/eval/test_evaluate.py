"""ldm/eval/evaluate.py: seed sets sample the seeds they name, and their scores pool as if scored together."""

from __future__ import annotations

import pytest
import torch

from ldm.data.shapes import generate_shapes
from ldm.eval.evaluate import evaluate_seed_sets, pool_scores, seed_set_report
from ldm.eval.shapes import SHAPE_PROMPTS, score_images


def labelled_shapes(num: int):
    """Rendered shapes with labels, every third colour label wrong and every fourth shape label wrong."""
    samples = list(generate_shapes(num, resolution=32, seed=3, split="val"))
    colors = [s.metadata["color"] if i % 3 else "red" if s.metadata["color"] != "red" else "blue"
              for i, s in enumerate(samples)]  # fmt: skip
    shapes = [s.metadata["shape"] if i % 4 else "square" if s.metadata["shape"] != "square" else "circle"
              for i, s in enumerate(samples)]  # fmt: skip
    return [s.image for s in samples], colors, shapes


def test_pooled_scores_equal_scoring_all_images_at_once():
    images, colors, shapes = labelled_shapes(30)
    parts = [slice(0, 7), slice(7, 19), slice(19, 30)]
    scores = [score_images(images[p], colors[p], shapes[p]) for p in parts]
    together = score_images(images, colors, shapes)
    assert pool_scores(scores).to_dict() == together.to_dict()
    assert 0.5 < together.color_accuracy < 0.9 and 0.5 < together.shape_accuracy < 0.9


def test_seed_set_report_gives_each_set_and_their_mean_and_min():
    images, colors, shapes = labelled_shapes(24)
    scores = [
        score_images(images[:12], colors[:12], shapes[:12]),
        score_images(images[12:], colors[12:], shapes[12:]),
    ]
    report = seed_set_report([0, 1234], scores)
    assert report["seeds"] == [0, 1234]
    assert [entry["seed"] for entry in report["seed_sets"]] == [0, 1234]
    assert report["seed_sets"][1] == {"seed": 1234, **scores[1].to_dict()}
    for key in ("color_accuracy", "shape_accuracy"):
        values = [getattr(score, key) for score in scores]
        assert report["mean"][key] == pytest.approx(sum(values) / 2)
        assert report["min"][key] == min(values)
        assert report[key] == pytest.approx(sum(values) / 2)  # equal sets: pooled = mean
    assert report["n"] == 24 and report["per_prompt"] == pool_scores(scores).per_prompt
    with pytest.raises(ValueError, match="one per seed"):
        seed_set_report([0], scores)


class SeedEcho:
    """A stand-in pipeline whose image k shows its seed and its prompt's index as pixel values."""

    prompts = [prompt for prompt, _, _ in SHAPE_PROMPTS]

    def __call__(self, prompts, seeds, sampler=None):
        images = torch.zeros(len(prompts), 3, 4, 4)
        images[:, 0, 0, 0] = torch.tensor(seeds, dtype=torch.float32) / 255
        images[:, 1, 0, 0] = torch.tensor([self.prompts.index(p) for p in prompts], dtype=torch.float32) / 255
        return images


def test_seed_sets_sample_seed_plus_j_and_lay_out_one_row_per_prompt():
    scores, images = evaluate_seed_sets(SeedEcho(), [10, 200, 40], n_per_prompt=2, batch_size=7)
    assert [score.n for score in scores] == [36, 36, 36]
    rows = (images[:, :2, 0, 0] * 255).round().long().view(18, 6, 2)  # prompt, column, (seed, prompt)
    assert rows[..., 1].tolist() == [[p] * 6 for p in range(18)]
    assert rows[..., 0].tolist() == [[10, 11, 200, 201, 40, 41]] * 18
    with pytest.raises(ValueError, match="seed sets repeat"):
        evaluate_seed_sets(SeedEcho(), [1, 1])
