"""What the image-conditioned benchmarks (``benchmarks/eval_sr.py``, ``benchmarks/eval_inpaint.py``) share:
their flags, 8-bit pixels back to tensors, and how a result is reported."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ldm.cli import command_parser
from ldm.samplers.presets import add_sampler_args


def evaluation_parser(prog: str, description: str | None, what: str) -> argparse.ArgumentParser:
    """A benchmark's parser with the flags both have: the checkpoint (`what` it must be), the validation
    split, the sampler, seeds, batch size, device and the JSON output."""
    p = command_parser(prog, description)
    p.add_argument("--ckpt", required=True, help=f"{what} stage-2 checkpoint")
    p.add_argument("--n", type=int, default=512, help="validation images (the shapes preset has 512)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the shapes set (data.seed)")
    add_sampler_args(p)
    p.add_argument("--seed", type=int, default=0, help="image k is sampled with seed + k")
    p.add_argument("--batch_size", type=int, default=64, help="images per sampling batch")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    return p


def from_uint8(pixels: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 arrays -> [B, 3, H, W] floats in [0, 1] (the inverse of ``ldm.eval.evaluate.to_uint8``)."""
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255


def run_evaluation(
    args: argparse.Namespace, evaluate: Callable[[argparse.Namespace], dict], table: Callable[[dict], str]
) -> dict:
    """``evaluate(args)``; writes the result as JSON to --out (if given) and prints ``table(result)``."""
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    result = evaluate(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    sys.stdout.write(table(result))
    return result
