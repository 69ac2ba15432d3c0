"""Generate a sample for every color x shape prompt of the shapes set and score the samples."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from ldm.config import SamplerConfig
from ldm.eval.metrics import quantize
from ldm.eval.shapes import SHAPE_PROMPTS, ShapesScore, score_from_tallies, score_images
from ldm.pipeline import Text2Image

log = logging.getLogger(__name__)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """[B, 3, H, W] in [0, 1] -> HxWx3 uint8 arrays."""
    return list(quantize(images).permute(0, 2, 3, 1).numpy())


def evaluate_shapes(
    pipe: Text2Image,
    *,
    n_per_prompt: int = 8,
    seed: int = 0,
    sampler: Optional[SamplerConfig] = None,
    batch_size: int = 48,
    progress: bool = False,
) -> tuple[ShapesScore, torch.Tensor]:
    """Score `n_per_prompt` samples of each of the 18 prompts; returns the score and the images.

    Sample j of every prompt uses seed + j, so two checkpoints are compared on the same noise.
    """
    if n_per_prompt < 1:
        raise ValueError(f"n_per_prompt must be >= 1, got {n_per_prompt}")
    jobs = [
        (prompt, color, shape, seed + j)
        for prompt, color, shape in SHAPE_PROMPTS
        for j in range(n_per_prompt)
    ]
    images = []
    for start in tqdm(range(0, len(jobs), batch_size), desc="evaluating", disable=not progress):
        chunk = jobs[start : start + batch_size]
        images.append(pipe([j[0] for j in chunk], [j[3] for j in chunk], sampler=sampler))
    images = torch.cat(images)
    score = score_images(to_uint8(images), [j[1] for j in jobs], [j[2] for j in jobs])
    return score, images


ACCURACIES = ("color_accuracy", "shape_accuracy")


def evaluate_seed_sets(
    pipe: Text2Image,
    seeds: Sequence[int],
    *,
    n_per_prompt: int = 8,
    sampler: Optional[SamplerConfig] = None,
    batch_size: int = 48,
    progress: bool = False,
) -> tuple[list[ShapesScore], torch.Tensor]:
    """:func:`evaluate_shapes` once per seed offset s (set s samples seeds s .. s + n_per_prompt - 1).

    Returns the score of each set and all images [prompts * sets * n_per_prompt, 3, H, W], one
    prompt after another, each prompt's images set after set (a grid row per prompt).
    """
    if not seeds:
        raise ValueError("no seeds to evaluate")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seed sets repeat: {list(seeds)}")
    scores, images = [], []
    for seed in seeds:
        score, set_images = evaluate_shapes(
            pipe, n_per_prompt=n_per_prompt, seed=seed, sampler=sampler, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
        scores.append(score)
        images.append(set_images.unflatten(0, (len(SHAPE_PROMPTS), n_per_prompt)))  # prompts n 3 h w
    return scores, torch.cat(images, dim=1).flatten(0, 1)  # (prompts sets*n) 3 h w


def pool_scores(scores: Sequence[ShapesScore]) -> ShapesScore:
    """One score over all the images of several scores (per prompt too), as if scored together."""
    tallies: dict[str, list[int]] = {}  # prompt -> [n, colour hits, shape hits]
    for score in scores:
        for prompt, entry in score.per_prompt.items():
            tally = tallies.setdefault(prompt, [0, 0, 0])
            tally[0] += entry["n"]
            tally[1] += round(entry["color_accuracy"] * entry["n"])
            tally[2] += round(entry["shape_accuracy"] * entry["n"])
    return score_from_tallies(tallies)


def seed_set_report(seeds: Sequence[int], scores: Sequence[ShapesScore]) -> dict:
    """The pooled score (the single-set keys), each seed set's score, and the mean and min over sets."""
    if len(seeds) != len(scores) or not scores:
        raise ValueError(f"got {len(seeds)} seeds and {len(scores)} scores; need one or more, one per seed")
    return {
        **pool_scores(scores).to_dict(),
        "seeds": list(seeds),
        "seed_sets": [{"seed": seed, **score.to_dict()} for seed, score in zip(seeds, scores, strict=True)],
        "mean": {key: float(np.mean([getattr(s, key) for s in scores])) for key in ACCURACIES},
        "min": {key: min(getattr(s, key) for s in scores) for key in ACCURACIES},
    }
