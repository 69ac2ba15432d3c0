"""``python -m ldm.eval --ckpt RUN/checkpoints/last.ckpt``: color and shape accuracy on the shapes set.

Samples every "a {color} {shape}" prompt (6 colors x 3 shapes) n times with the checkpoint's
sampler (or the one given), classifies each image analytically, and prints the accuracies as
JSON; --out also writes them to a file and --grid saves all samples (one row per prompt).
--suite compose scores the compose world's prompts instead, GenEval's way (ldm/eval/compose.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torchvision.utils import save_image

from ldm.cli import command_parser, run_command
from ldm.config import SamplerConfig
from ldm.eval.compose import evaluate_compose, held_out_of_run
from ldm.eval.evaluate import evaluate_shapes
from ldm.pipeline import Text2Image
from ldm.samplers.presets import sampler_preset


def run(argv: list[str] | None = None) -> dict:
    """Parse the flags, evaluate, print the summary; returns the full result (raises on bad input)."""
    p = command_parser("python -m ldm.eval", __doc__)
    p.add_argument("--ckpt", required=True, help="stage-2 checkpoint")
    p.add_argument("--suite", choices=("shapes", "compose"), default="shapes", help="which prompts and rules")
    p.add_argument("--n_per_prompt", type=int, default=8, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0, help="sample j of each prompt uses seed + j")
    p.add_argument("--sampler", default=None, help="a preset of conf/sampler (default: the checkpoint's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the sampler's)")
    p.add_argument("--scale", type=float, default=None, help="guidance scale (default: the sampler's)")
    p.add_argument("--batch_size", type=int, default=48, help="images per sampling batch")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    p.add_argument("--grid", default=None, help="save all samples as a grid PNG here")
    args = p.parse_args(argv)

    pipe = Text2Image.from_checkpoint(args.ckpt, device=args.device)
    sampler = sampler_preset(pipe.sampler, args.sampler, steps=args.steps, guidance_scale=args.scale)
    if args.suite == "compose":
        return run_compose(args, pipe, sampler)
    score, images = evaluate_shapes(
        pipe,
        n_per_prompt=args.n_per_prompt,
        seed=args.seed,
        sampler=sampler,
        batch_size=args.batch_size,
        progress=True,
    )
    result = {"ckpt": str(args.ckpt), "sampler": vars(sampler), **score.to_dict()}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.grid:
        save_image(images, args.grid, nrow=args.n_per_prompt, padding=1)
    summary = {k: result[k] for k in ("color_accuracy", "shape_accuracy", "n")}
    sys.stdout.write(json.dumps({**summary, "sampler": result["sampler"]}) + "\n")
    return result


def run_compose(args: argparse.Namespace, pipe: Text2Image, sampler: SamplerConfig) -> dict:
    """``--suite compose``: evaluate, write and print as the shapes suite does; returns the full result."""
    score, images = evaluate_compose(
        pipe,
        n_per_prompt=args.n_per_prompt,
        seed=args.seed,
        sampler=sampler,
        batch_size=args.batch_size,
        progress=True,
        held_out=held_out_of_run(args.ckpt),
    )
    result = {"ckpt": str(args.ckpt), "suite": "compose", "sampler": vars(sampler), **score.to_dict()}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.grid:
        save_image(images, args.grid, nrow=args.n_per_prompt, padding=1)
    tasks = {task: entry["accuracy"] for task, entry in score.tasks.items()}
    summary = {"overall": score.overall, **tasks, "n": score.n, "sampler": result["sampler"]}
    sys.stdout.write(json.dumps(summary) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    """The ``python -m ldm.eval`` / ``ldm-eval`` command."""
    run_command(run, argv)


if __name__ == "__main__":
    main()
