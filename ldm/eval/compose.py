"""GenEval-style accuracy of samples on the compose world's prompts, by the analytic detector.

The prompts are ``ldm.data.compose_prompts``' (never captions of training images). Each sample is
judged right or wrong by its task's rule, on the objects that ``ldm.eval.detect`` finds; every rule
asks for exactly the objects the prompt names, so an extra shape (not debris) is an error:

    single_object      one object, of the asked shape
    colors             one object, of the asked shape and colour
    two_objects        two objects, of the two asked shapes (colours not judged)
    counting           N objects, all of the asked colour and shape
    color_attribution  two objects, each asked colour-shape pair among them
    position           as color_attribution, and the asked relation holds between the centres: at
                       least POSITION_MARGIN apart along its axis, the offset within
                       POSITION_MAX_ANGLE of its direction (GenEval's 60 degrees)
    held_out_bindings  as color_attribution, with one or two objects

A task's accuracy is the fraction of its samples judged right; the overall score is the mean over
tasks, as GenEval's.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml
from PIL import Image
from tqdm import tqdm

from ldm.config import ComposeConfig, SamplerConfig
from ldm.data.compose_grammar import relation_holds
from ldm.data.compose_prompts import TASKS, EvalPrompt, evaluation_prompts
from ldm.eval.detect import DetectedObject, detect_objects
from ldm.eval.evaluate import to_uint8
from ldm.pipeline import Text2Image

log = logging.getLogger(__name__)

POSITION_MARGIN = 0.05
"""Least offset of the two centres along the relation's axis, as a fraction of the image side."""
POSITION_MAX_ANGLE = 60.0
"""Largest angle (degrees) between the centres' offset and the relation's direction."""


def judge(objects: Sequence[DetectedObject], prompt: EvalPrompt) -> bool:
    """Whether the detected objects satisfy the prompt by its task's rule."""
    asked = prompt.spec.objects
    if len(objects) != len(asked):
        return False
    if prompt.task == "single_object":
        return objects[0].shape == asked[0].shape
    if prompt.task == "two_objects":
        return sorted(o.shape for o in objects) == sorted(a.shape for a in asked)
    if Counter(o.binding for o in objects) != Counter(prompt.spec.bindings):
        return False
    if prompt.task == "position":
        # The prompt's two pairs differ in colour and shape, so each object is found by its pair.
        first, second = (next(o for o in objects if o.binding == a.binding) for a in asked)
        relation = prompt.spec.relation
        return bool(relation_holds(relation, (first.cx, first.cy), (second.cx, second.cy),
                                   POSITION_MARGIN, POSITION_MAX_ANGLE))  # fmt: skip
    return True


@dataclass
class ComposeScore:
    """How often generated images show what each task's prompts ask for."""

    overall: float
    """Mean of the task accuracies."""
    tasks: dict[str, dict] = field(default_factory=dict)
    """Per task: accuracy, n (samples) and prompts."""
    n: int = 0
    per_prompt: dict[str, dict] = field(default_factory=dict)
    """Per prompt: task, n and accuracy."""

    def to_dict(self) -> dict:
        """A JSON-serialisable copy."""
        return asdict(self)


def score_compose(images: Sequence[Image.Image | np.ndarray], prompts: Sequence[EvalPrompt]) -> ComposeScore:
    """Detect the objects of each image and judge it against its prompt (one prompt per image)."""
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images and {len(prompts)} prompts; the counts must match")
    if len(images) == 0:
        raise ValueError("no images to score")
    tallies: dict[str, list] = {}  # prompt text -> [task, n, hits]
    for image, prompt in zip(images, prompts, strict=True):
        tally = tallies.setdefault(prompt.text, [prompt.task, 0, 0])
        if tally[0] != prompt.task:
            raise ValueError(f"prompt '{prompt.text}' is in two tasks, {tally[0]} and {prompt.task}")
        tally[1] += 1
        tally[2] += int(judge(detect_objects(image), prompt))
    tasks = {}
    for task in TASKS:
        rows = [t for t in tallies.values() if t[0] == task]
        if rows:
            n = sum(t[1] for t in rows)
            tasks[task] = {"accuracy": sum(t[2] for t in rows) / n, "n": n, "prompts": len(rows)}
    return ComposeScore(
        overall=float(np.mean([entry["accuracy"] for entry in tasks.values()])),
        tasks=tasks,
        n=len(images),
        per_prompt={
            text: {"task": task, "n": n, "accuracy": hits / n} for text, (task, n, hits) in tallies.items()
        },
    )


def held_out_of_run(ckpt: str | Path) -> list[str]:
    """The held-out pairs a checkpoint was trained without: those of its run's config.yaml
    (``<run>/config.yaml`` beside ``<run>/checkpoints/``) when it trained on shapes_compose, else the
    default ones."""
    config_path = Path(ckpt).resolve().parent.parent / "config.yaml"
    default = list(ComposeConfig().held_out)
    if not config_path.is_file():
        return default
    data = (yaml.safe_load(config_path.read_text()) or {}).get("data") or {}
    if data.get("name") != "shapes_compose":
        return default
    held_out = (data.get("compose") or {}).get("held_out", default)
    if held_out != default:
        log.info("held-out pairs of the run (%s): %s", config_path, ", ".join(held_out))
    return list(held_out)


def evaluate_compose(
    pipe: Text2Image,
    *,
    n_per_prompt: int = 8,
    seed: int = 0,
    sampler: Optional[SamplerConfig] = None,
    batch_size: int = 48,
    progress: bool = False,
    held_out: Optional[Sequence[str]] = None,
) -> tuple[ComposeScore, torch.Tensor]:
    """Score ``n_per_prompt`` samples of each compose prompt; returns the score and the images (prompt
    by prompt). Sample j of every prompt uses seed + j, so two checkpoints are compared on the same noise."""
    if n_per_prompt < 1:
        raise ValueError(f"n_per_prompt must be >= 1, got {n_per_prompt}")
    prompts = evaluation_prompts(ComposeConfig().held_out if held_out is None else held_out)
    jobs = [(prompt, seed + j) for prompt in prompts for j in range(n_per_prompt)]
    images = []
    for start in tqdm(range(0, len(jobs), batch_size), desc="evaluating", disable=not progress):
        chunk = jobs[start : start + batch_size]
        images.append(pipe([p.text for p, _ in chunk], [s for _, s in chunk], sampler=sampler))
    images = torch.cat(images)
    return score_compose(to_uint8(images), [p for p, _ in jobs]), images
