"""``python -m ldm.eval --ckpt RUN/checkpoints/last.ckpt``: color and shape accuracy on the shapes set.

Samples every "a {color} {shape}" prompt (6 colors x 3 shapes) n times with the checkpoint's
sampler (or the one given), classifies each image analytically, and prints the accuracies as
JSON; --out also writes them to a file and --grid saves all samples (one row per prompt).
--suite compose scores the compose world's prompts instead, GenEval's way (ldm/eval/compose.py).
--seeds 0 1234 5678 evaluates several seed sets (set s samples seeds s .. s + n - 1) and reports
each, their mean and their min. --metrics fid kid clip adds FID and KID against --reference DIR
and CLIP score, with feature extractors read from local files only (ldm/eval/metrics.py).
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
from ldm.eval.evaluate import evaluate_seed_sets, seed_set_report
from ldm.eval.metrics import add_metric_arguments, check_metric_arguments, metrics_from_arguments
from ldm.eval.shapes import SHAPE_PROMPTS
from ldm.pipeline import Text2Image
from ldm.samplers.presets import add_sampler_args, sampler_from_args


def run(argv: list[str] | None = None) -> dict:
    """Parse the flags, evaluate, print the summary; returns the full result (raises on bad input)."""
    p = command_parser("python -m ldm.eval", __doc__)
    p.add_argument("--ckpt", required=True, help="stage-2 checkpoint")
    p.add_argument("--suite", choices=("shapes", "compose"), default="shapes", help="which prompts and rules")
    p.add_argument("--n_per_prompt", type=int, default=8, help="samples per prompt")
    p.add_argument("--seed", type=int, default=None, help="sample j of each prompt uses seed + j (default 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="several seed sets, each as --seed")
    add_sampler_args(p)
    p.add_argument("--batch_size", type=int, default=48, help="images per sampling batch")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    p.add_argument("--grid", default=None, help="save all samples as a grid PNG here")
    add_metric_arguments(p)
    args = p.parse_args(argv)
    if args.seed is not None and args.seeds is not None:
        p.error("give --seed or --seeds, not both")
    check_metric_arguments(p, args)
    seeds = args.seeds or [0 if args.seed is None else args.seed]
    if args.suite == "compose" and (len(seeds) > 1 or args.metrics):
        p.error("--suite compose takes one seed set and no --metrics")

    pipe = Text2Image.from_checkpoint(args.ckpt, device=args.device)
    sampler = sampler_from_args(pipe.sampler, args)
    if args.suite == "compose":
        return run_compose(args, pipe, sampler, seeds[0])
    scores, images = evaluate_seed_sets(
        pipe, seeds, n_per_prompt=args.n_per_prompt, sampler=sampler, batch_size=args.batch_size,
        progress=True,
    )  # fmt: skip
    result = {"ckpt": str(args.ckpt), "sampler": vars(sampler), **seed_set_report(seeds, scores)}
    captions = [prompt for prompt, _, _ in SHAPE_PROMPTS for _ in range(len(seeds) * args.n_per_prompt)]
    result.update(metrics_from_arguments(args, images, captions, device=pipe.device))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.grid:
        save_image(images, args.grid, nrow=len(seeds) * args.n_per_prompt, padding=1)
    shown = ["color_accuracy", "shape_accuracy", "n", *(["seeds", "mean", "min"] if len(seeds) > 1 else [])]
    shown += [key for key in ("fid", "kid", "kid_std", "clip_score") if key in result]
    summary = {key: result[key] for key in shown}
    sys.stdout.write(json.dumps({**summary, "sampler": result["sampler"]}) + "\n")
    return result


def run_compose(args: argparse.Namespace, pipe: Text2Image, sampler: SamplerConfig, seed: int) -> dict:
    """``--suite compose``: evaluate, write and print as the shapes suite does; returns the full result."""
    score, images = evaluate_compose(
        pipe,
        n_per_prompt=args.n_per_prompt,
        seed=seed,
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
