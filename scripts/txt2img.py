"""Sample images from a trained ldm checkpoint, with the flags of Stable Diffusion 2's script.

    python scripts/txt2img.py --ckpt outputs/<run>/checkpoints/last.ckpt --prompt "a red circle" \
        --n_samples 8 --outdir out/

Writes every image to OUTDIR/samples/NNNNN.png and one grid per call to OUTDIR/grid-NNNN.png
(rows: prompt x iteration, columns: samples). Image k of a call uses seed --seed + k.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from ldm.pipeline import Text2Image
from ldm.samplers.presets import sampler_preset
from ldm.weights.checkpoint import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(
        p, outdir="outputs/txt2img-samples", steps_help="sampling steps (default: the sampler's)"
    )
    p.add_argument("--H", type=int, default=None, help="image height (default: the training resolution)")
    p.add_argument("--W", type=int, default=None, help="image width (default: the training resolution)")
    return p.parse_args(argv)


def add_sampling_args(p: argparse.ArgumentParser, *, outdir: str, steps_help: str) -> None:
    """The flags txt2img.py and img2img.py share (those of Stable Diffusion's scripts)."""
    p.add_argument("--prompt", type=str, help="the prompt to render")
    p.add_argument("--from-file", type=str, help="a text file with one prompt per line (instead of --prompt)")
    p.add_argument("--negative-prompt", type=str, default="", help="what to guide away from")
    p.add_argument(
        "--ckpt", type=str, required=True, help="stage-2 checkpoint (<run dir>/checkpoints/last.ckpt)"
    )
    p.add_argument("--outdir", type=str, default=outdir, help="where to write images")
    p.add_argument(
        "--n_samples", type=int, default=4, help="images per prompt per iteration (the batch size)"
    )
    p.add_argument("--n_iter", type=int, default=1, help="iterations (batches) per prompt")
    p.add_argument("--steps", type=int, default=None, help=steps_help)
    p.add_argument(
        "--scale", type=float, default=None, help="classifier-free guidance scale (default: the sampler's)"
    )
    p.add_argument(
        "--sampler", type=str, default=None, help="a preset of conf/sampler (default: the checkpoint's)"
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the first image; image k uses seed + k")
    p.add_argument("--device", type=str, default=None, help="cpu or cuda (default: cuda when available)")


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.from_file:
        path = Path(args.from_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompt file {path} has no prompts")
        return prompts
    if args.prompt is None or not args.prompt.strip():
        raise ValueError('empty prompt: give --prompt "..." or --from-file FILE')
    return [args.prompt.strip()]


def check_counts(args: argparse.Namespace) -> None:
    for name in ("n_samples", "n_iter"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1")


def write_samples(
    args: argparse.Namespace,
    prompts: list[str],
    steps: int,
    desc: str,
    generate: Callable[[str, list[int], Callable[[Any], None]], torch.Tensor],
    name: str,
) -> list[Path]:
    """For every prompt x iteration, ``generate(prompt, seeds, callback)`` a batch; write the images and a grid.

    Images go to OUTDIR/samples/NNNNN.png, numbered on from what is there; the grid of this call to
    OUTDIR/grid-NNNN.png (rows: prompt x iteration). Image k of the call uses seed --seed + k.
    """
    outdir = Path(args.outdir)
    sample_dir = outdir / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    base_count = len(list(sample_dir.glob("*.png")))
    grid_count = len(list(outdir.glob("grid-*.png")))

    batches = [(p, it) for it in range(args.n_iter) for p in prompts]
    bar = tqdm(total=len(batches) * steps, desc=desc, unit="step")
    rows, written, k = [], [], 0
    for prompt, _ in batches:
        seeds = [args.seed + k + i for i in range(args.n_samples)]
        images = generate(prompt, seeds, lambda _: bar.update(1))
        k += args.n_samples
        for image in images:
            path = sample_dir / f"{base_count + len(written):05d}.png"
            save_image(image, path)
            written.append(path)
        rows.append(images)
    bar.close()
    grid = make_grid(torch.cat(rows), nrow=args.n_samples, padding=2)
    grid_path = outdir / f"grid-{grid_count:04d}.png"
    save_image(grid, grid_path)
    logging.getLogger(name).info("wrote %d images to %s and the grid %s", len(written), sample_dir, grid_path)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    check_counts(args)
    prompts = read_prompts(args)
    pipe = Text2Image.from_checkpoint(args.ckpt, device=args.device)
    sampler = sampler_preset(pipe.sampler, args.sampler, steps=args.steps, guidance_scale=args.scale)
    pipe.check_request(sampler, args.H, args.W)

    def generate(prompt: str, seeds: list[int], callback: Callable[[Any], None]) -> torch.Tensor:
        return pipe(
            [prompt] * len(seeds),
            seeds,
            sampler=sampler,
            height=args.H,
            width=args.W,
            negative_prompt=args.negative_prompt,
            callback=callback,
        )

    desc = f"{sampler.name} x{sampler.steps}"
    return write_samples(args, prompts, sampler.steps, desc, generate, "txt2img")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        sys.exit(f"error: {e}")
