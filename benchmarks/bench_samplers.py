"""Score every sampler on the shapes evaluator at several step counts, with wall time: a Markdown table.

    python benchmarks/bench_samplers.py --ckpt RUN/checkpoints/last.ckpt --steps 10 20 50 --out bench.json

Each row is ``python -m ldm.eval --ckpt CKPT --sampler NAME --steps N`` (the same function, seeds
and batches: 18 prompts x --n_per_prompt images), timed around the whole evaluation (text
encoding, sampling, decoding, scoring). "model calls" counts denoiser evaluations per image (each
one a batched conditional + unconditional pass, or a single pass for a guidance-distilled student,
ldm/samplers/distilled.py, which samples only at the step count it was distilled for);
"CPU s" is the process's CPU time (all threads) and
"load" the machine's 1-minute load average after the row, since other work on the machine inflates
wall times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from ldm.benchmark.sampling import CallCounter
from ldm.eval.evaluate import evaluate_shapes
from ldm.eval.shapes import SHAPE_PROMPTS
from ldm.pipeline import Text2Image
from ldm.samplers.presets import sampler_preset, sampler_presets
from ldm.weights.checkpoint import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    presets = sampler_presets()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="stage-2 checkpoint")
    p.add_argument("--samplers", nargs="+", default=presets, help="presets of conf/sampler (default: all)")
    p.add_argument("--steps", nargs="+", type=int, default=[10, 20, 50], help="step counts")
    p.add_argument("--schedule", default=None, help="override the presets' sigma schedule")
    p.add_argument("--scale", type=float, default=None, help="guidance scale (default: the presets')")
    p.add_argument("--n_per_prompt", type=int, default=8, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0, help="sample j of each prompt uses seed + j")
    p.add_argument("--batch_size", type=int, default=48, help="images per sampling batch")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    pipe = Text2Image.from_checkpoint(args.ckpt, device=args.device)
    calls = CallCounter(pipe.denoiser)
    n_images = len(SHAPE_PROMPTS) * args.n_per_prompt
    n_batches = math.ceil(n_images / args.batch_size)
    # Warm-up (first-call allocations), not timed.
    warmup_steps = pipe.distilled.steps if pipe.distilled is not None else 1  # a student samples at its own
    evaluate_shapes(pipe, n_per_prompt=1, sampler=sampler_preset(pipe.sampler, "ddim", steps=warmup_steps))

    meta = {
        "ckpt": str(args.ckpt),
        "device": str(pipe.device),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    rows = []
    for name in args.samplers:
        for steps in args.steps:
            sampler = sampler_preset(pipe.sampler, name, steps=steps, guidance_scale=args.scale)
            if args.schedule:
                sampler = dataclasses.replace(sampler, schedule=args.schedule)
            pipe.check_request(sampler)
            calls.count = 0
            start, cpu_start = time.perf_counter(), time.process_time()
            score, _ = evaluate_shapes(
                pipe,
                n_per_prompt=args.n_per_prompt,
                seed=args.seed,
                sampler=sampler,
                batch_size=args.batch_size,
            )
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            row = {
                "sampler": name,
                "schedule": sampler.schedule,
                "steps": steps,
                "model_calls": calls.count // n_batches,
                "color_accuracy": score.color_accuracy,
                "shape_accuracy": score.shape_accuracy,
                "n": score.n,
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),  # process CPU time, all threads
                "load_1min": round(os.getloadavg()[0], 2),  # other work on the machine inflates wall_s
            }
            rows.append(row)
            logging.getLogger("bench").info("%s", json.dumps(row))
            if args.out:  # after every row, so that an interrupted run keeps what it measured
                Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    sys.stdout.write(markdown_table(rows))
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (accuracies in percent)."""
    lines = [
        "| sampler | schedule | steps | model calls | color acc. % | shape acc. % | wall s | CPU s | load (1 min) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['schedule']} | {r['steps']} | {r['model_calls']} | "
            f"{100 * r['color_accuracy']:.1f} | {100 * r['shape_accuracy']:.1f} | {r['wall_s']:.1f} | "
            f"{r['cpu_s']:.1f} | {r['load_1min']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        sys.exit(f"error: {e}")
