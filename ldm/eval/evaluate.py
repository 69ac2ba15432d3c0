"""Generate a sample for every color x shape prompt of the shapes set and score the samples."""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from ldm.config import SamplerConfig
from ldm.eval.shapes import SHAPE_PROMPTS, ShapesScore, score_images
from ldm.pipeline import Text2Image

log = logging.getLogger(__name__)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """[B, 3, H, W] in [0, 1] -> HxWx3 uint8 arrays."""
    return list((images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


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
