"""Does a compose model's denoising loss depend on the relation word? A diffusion-classifier test per timestep.

    python benchmarks/relation_loss.py --ckpt outputs/<compose run>/checkpoints/last.ckpt --out relation_loss.json

A model can only follow "to the left of" when sampling if its prediction at some noise level depends
on those words. This draws relation scenes of the compose world ("a A <relation> a B", rendered at the
checkpoint's image size) and, at each of a few timesteps and on the same noise, measures the training
loss (the checkpoint's own target: eps, v or x0) with three captions: the true one, the same with the
relation flipped ("to the right of"; false for the image), and, as a control, the two objects'
colours swapped (also false, but in the bindings that the model is known to read). A model that
reads the relation has a lower loss with the true caption (as Li et al. 2023's diffusion classifier
would pick it); one that ignores the word has the same loss with either.

It also prints how much the relation word can say at all: the share of the variance of the two
objects' layouts (their box masks on a 16x16 grid, A and B apart) explained by knowing the relation
rather than only its axis. That bounds what a prediction from pure noise gains from the word.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ldm.cli import command_parser, run_command
from ldm.conditioning.concat import call_network
from ldm.config import ComposeConfig
from ldm.data.compose import ComposeScene, place_scene, render_scene
from ldm.data.compose_grammar import RELATIONS, ObjectSpec, SceneSpec, caption_of
from ldm.data.shapes import COLORS, SHAPES, SUPERSAMPLE
from ldm.diffusion.objective import q_sample, training_target
from ldm.pipeline import load_module

log = logging.getLogger("relation_loss")

OPPOSITE = {
    relation: next(other for other, rule in RELATIONS.items() if rule == (axis, -sign))
    for relation, (axis, sign) in RELATIONS.items()
}
"""Each relation and the one that is false wherever it holds."""
TIMESTEPS = (50, 200, 400, 600, 800, 950, 999)
"""Where the loss is measured by default (of SD's 1000 training timesteps)."""
LAYOUT_GRID = 16
"""Side of the grid on which the layout bound rasterises each object's box."""


class Trial(NamedTuple):
    """One relation scene and the captions it is scored with."""

    scene: ComposeScene
    true: str
    flipped: str
    """The relation replaced by its opposite."""
    swapped: str
    """The two objects' colours exchanged (a binding the image does not show)."""


def relation_scenes(n: int, resolution: int, seed: int, held_out: Sequence[str] = ()) -> list[ComposeScene]:
    """`n` relation scenes, the relations in turn, of two objects of different colours drawn from the
    pairs not held out (no size words, as the evaluator's prompts)."""
    rng = np.random.default_rng(seed)
    pairs = [(c, s) for c in COLORS for s in SHAPES if f"{c} {s}" not in set(held_out)]
    relations = list(RELATIONS)
    scenes = []
    while len(scenes) < n:
        i, j = rng.choice(len(pairs), size=2, replace=False)
        a, b = ObjectSpec(*pairs[i]), ObjectSpec(*pairs[j])
        if a.color == b.color or f"{b.color} {a.shape}" in held_out or f"{a.color} {b.shape}" in held_out:
            continue  # the colour swap must give a different caption of seen pairs
        spec = SceneSpec("relation", (a, b), relations[len(scenes) % len(relations)])
        scenes.append(place_scene(spec, rng, resolution))
    return scenes


def trial_of(scene: ComposeScene) -> Trial:
    """The true, flipped-relation and swapped-colour captions of a relation scene."""
    spec = scene.spec.plain()
    a, b = spec.objects
    flipped = replace(spec, relation=OPPOSITE[spec.relation])
    swapped = replace(spec, objects=(replace(a, color=b.color), replace(b, color=a.color)))
    return Trial(scene, caption_of(spec), caption_of(flipped), caption_of(swapped))


def layout_share(scenes: Sequence[ComposeScene], grid: int = LAYOUT_GRID) -> float:
    """Share of the variance of the objects' box masks (A and B as two channels) that the relation
    explains beyond its axis: per axis, the between-relation sum of squares over the total."""
    centres = (np.arange(grid) + 0.5) / grid
    explained = total = 0.0
    for axis in (0, 1):
        groups = {}
        for scene in scenes:
            if RELATIONS[scene.spec.relation][0] != axis:
                continue
            masks = []
            for index in range(2):
                cx, cy = scene.centre(index)
                half = scene.objects[index].side / (scene.resolution * SUPERSAMPLE) / 2
                masks.append((abs(centres[None, :] - cx) < half) & (abs(centres[:, None] - cy) < half))
            groups.setdefault(scene.spec.relation, []).append(np.stack(masks).astype(np.float64))
        if not groups:
            continue
        pooled = np.concatenate([np.stack(g) for g in groups.values()])
        mean = pooled.mean(axis=0)
        total += ((pooled - mean) ** 2).sum()
        explained += sum(len(g) * ((np.stack(g).mean(axis=0) - mean) ** 2).sum() for g in groups.values())
    if total == 0:
        raise ValueError("the scenes' layouts do not vary: nothing to explain")
    return float(explained / total)


@torch.no_grad()
def losses(module, trials: Sequence[Trial], timesteps: Sequence[int], repeats: int, seed: int) -> dict:
    """Per timestep: the mean loss with each caption, and the share of scenes whose true caption scores
    lower than the flipped one (and than the swapped one), each scene's loss averaged over `repeats`
    noise draws shared by the three captions."""
    device = module.scale_factor.device
    images = np.stack([np.asarray(render_scene(t.scene).convert("RGB")) for t in trials])
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
    z0 = module.encode_mean(x)
    contexts = {
        kind: module.cond_stage_model([getattr(t, kind) for t in trials])
        for kind in ("true", "flipped", "swapped")
    }
    network = module.model.diffusion_model
    alphas_cumprod = module.objective.alphas_cumprod
    parameterization = module.objective.parameterization
    generator = torch.Generator(device="cpu").manual_seed(seed)
    result = {}
    for step in timesteps:
        t = torch.full((len(trials),), step, device=device, dtype=torch.long)
        a_t = alphas_cumprod[t]
        per_sample = {kind: torch.zeros(len(trials), device=device) for kind in contexts}
        for _ in range(repeats):
            noise = torch.randn(z0.shape, generator=generator).to(device)
            z_t = q_sample(z0, a_t, noise)
            target = training_target(z0, noise, a_t, parameterization)
            for kind, context in contexts.items():
                error = call_network(network, z_t, t, context).float() - target
                per_sample[kind] += error.pow(2).flatten(1).mean(dim=1) / repeats
        true = per_sample["true"]
        result[str(step)] = {
            **{kind: float(values.mean()) for kind, values in per_sample.items()},
            "flipped_over_true": float(per_sample["flipped"].mean() / true.mean()),
            "swapped_over_true": float(per_sample["swapped"].mean() / true.mean()),
            "true_below_flipped": float((true < per_sample["flipped"]).float().mean()),
            "true_below_swapped": float((true < per_sample["swapped"]).float().mean()),
        }
        log.info("t=%d: %s", step, result[str(step)])
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = command_parser("benchmarks/relation_loss.py", __doc__)
    p.add_argument("--ckpt", required=True, help="a text-to-image stage-2 checkpoint of the compose world")
    p.add_argument("--scenes", type=int, default=96, help="relation scenes scored (the relations in turn)")
    p.add_argument("--timesteps", type=int, nargs="+", default=list(TIMESTEPS), help="training timesteps")
    p.add_argument("--repeats", type=int, default=4, help="noise draws per scene and timestep")
    p.add_argument("--layout-scenes", type=int, default=4000, help="scenes drawn for the layout bound")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    args = p.parse_args(argv)
    for name, least in (("scenes", 1), ("repeats", 1), ("layout_scenes", 2)):
        if getattr(args, name) < least:
            p.error(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    module = load_module(args.ckpt, args.device, task="none")
    num_timesteps = module.objective.num_timesteps
    if any(not 0 <= t < num_timesteps for t in args.timesteps):
        raise ValueError(f"--timesteps must lie in 0..{num_timesteps - 1}, got {args.timesteps}")
    held_out = ComposeConfig().held_out
    scenes = relation_scenes(args.scenes, module.image_size, args.seed, held_out)
    result = {
        "ckpt": str(args.ckpt),
        "scenes": args.scenes,
        "repeats": args.repeats,
        "parameterization": module.objective.parameterization,
        "layout_share": layout_share(
            relation_scenes(args.layout_scenes, module.image_size, args.seed + 1, held_out)
        ),
        "timesteps": losses(module, [trial_of(s) for s in scenes], args.timesteps, args.repeats, args.seed),
    }
    print(
        f"the relation word explains {result['layout_share']:.1%} of the layouts' variance (beyond its axis)"
    )
    print(
        f"{'t':>4}  {'loss, true caption':>18}  {'flipped/true':>12}  {'swapped/true':>12}  true<flipped  true<swapped"
    )
    for step, row in result["timesteps"].items():
        print(
            f"{step:>4}  {row['true']:18.5f}  {row['flipped_over_true']:12.4f}  {row['swapped_over_true']:12.4f}"
            f"  {row['true_below_flipped']:12.2f}  {row['true_below_swapped']:12.2f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run_command(main)
