"""Redraw an image toward a prompt with a trained ldm checkpoint, with the flags of Stable Diffusion's script.

    python scripts/img2img.py --ckpt outputs/<run>/checkpoints/last.ckpt --init-img in.png \
        --prompt "a blue square" --strength 0.75 --n_samples 4 --outdir out/

The image is encoded, noised to the step that --strength picks (1: the whole schedule, from noise;
0: the image back), and denoised with the sampler. Writes every image to OUTDIR/samples/NNNNN.png
and one grid per call to OUTDIR/grid-NNNN.png (rows: prompt x iteration, columns: samples). Image k
of a call uses seed --seed + k.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor

from ldm.pipeline import Text2Image, img2img_steps
from ldm.samplers.presets import sampler_preset
from ldm.weights.checkpoint import CheckpointError

# scripts/ is on sys.path when a script runs: share txt2img's flags, prompt reading and image writing.
from txt2img import add_sampling_args, check_counts, read_prompts, write_samples  # isort: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init-img", type=str, required=True, help="the starting image (png, jpg, ...)")
    p.add_argument(
        "--strength",
        type=float,
        default=0.75,
        help="how much to change it: 0 keeps it, 1 redraws it from noise",
    )
    add_sampling_args(
        p,
        outdir="outputs/img2img-samples",
        steps_help="sampling steps of the full schedule (default: the sampler's)",
    )
    p.add_argument(
        "--H",
        type=int,
        default=None,
        help="resize the image to this height (default: its own, rounded down to the autoencoder factor)",
    )
    p.add_argument("--W", type=int, default=None, help="resize the image to this width (likewise)")
    return p.parse_args(argv)


def load_image(path: str | Path, factor: int, height: int | None, width: int | None) -> torch.Tensor:
    """The image at `path` as [1, 3, H, W] in [0, 1], resized to (height, width) or to multiples of `factor`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init image not found: {path}")
    try:
        image = Image.open(path).convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file") from None
    w, h = image.size
    size = (width or w - w % factor, height or h - h % factor)
    if min(size) < factor:
        raise ValueError(f"image {path} ({w}x{h}) is smaller than the autoencoder factor {factor}")
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return pil_to_tensor(image).float().div(255).unsqueeze(0)


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    check_counts(args)
    if not 0.0 <= args.strength <= 1.0:
        raise ValueError(f"--strength must be in [0, 1], got {args.strength}")
    prompts = read_prompts(args)
    pipe = Text2Image.from_checkpoint(args.ckpt, device=args.device)
    sampler = sampler_preset(pipe.sampler, args.sampler, steps=args.steps, guidance_scale=args.scale)
    init = load_image(args.init_img, pipe.autoencoder.downsample_factor, args.H, args.W)
    pipe.check_request(sampler, *init.shape[-2:])

    def generate(prompt: str, seeds: list[int], callback: Callable[[Any], None]) -> torch.Tensor:
        return pipe.img2img(
            init.expand(len(seeds), -1, -1, -1),
            [prompt] * len(seeds),
            seeds,
            strength=args.strength,
            sampler=sampler,
            negative_prompt=args.negative_prompt,
            callback=callback,
        )

    steps = img2img_steps(args.strength, sampler.steps)
    return write_samples(args, prompts, steps, f"{sampler.name} x{steps}", generate, "img2img")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        sys.exit(f"error: {e}")
