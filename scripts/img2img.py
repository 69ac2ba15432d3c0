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
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from ldm.checkpoint import CheckpointError
from ldm.config import sampler_preset
from ldm.pipeline import Text2Image, img2img_steps

# scripts/ is on sys.path when a script runs: share txt2img's prompt reading.
from txt2img import read_prompts  # isort: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init-img", type=str, required=True, help="the starting image (png, jpg, ...)")
    p.add_argument(
        "--strength",
        type=float,
        default=0.75,
        help="how much to change it: 0 keeps it, 1 redraws it from noise",
    )
    p.add_argument("--prompt", type=str, help="the prompt to render")
    p.add_argument("--from-file", type=str, help="a text file with one prompt per line (instead of --prompt)")
    p.add_argument("--negative-prompt", type=str, default="", help="what to guide away from")
    p.add_argument(
        "--ckpt", type=str, required=True, help="stage-2 checkpoint (<run dir>/checkpoints/last.ckpt)"
    )
    p.add_argument("--outdir", type=str, default="outputs/img2img-samples", help="where to write images")
    p.add_argument(
        "--n_samples", type=int, default=4, help="images per prompt per iteration (the batch size)"
    )
    p.add_argument("--n_iter", type=int, default=1, help="iterations (batches) per prompt")
    p.add_argument(
        "--steps", type=int, default=None, help="sampling steps of the full schedule (default: the sampler's)"
    )
    p.add_argument(
        "--scale", type=float, default=None, help="classifier-free guidance scale (default: the sampler's)"
    )
    p.add_argument(
        "--sampler", type=str, default=None, help="a preset of conf/sampler (default: the checkpoint's)"
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the first image; image k uses seed + k")
    p.add_argument(
        "--H",
        type=int,
        default=None,
        help="resize the image to this height (default: its own, rounded down to the autoencoder factor)",
    )
    p.add_argument("--W", type=int, default=None, help="resize the image to this width (likewise)")
    p.add_argument("--device", type=str, default=None, help="cpu or cuda (default: cuda when available)")
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
    for name in ("n_samples", "n_iter"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1")
    if not 0.0 <= args.strength <= 1.0:
        raise ValueError(f"--strength must be in [0, 1], got {args.strength}")
    prompts = read_prompts(args)
    pipe = Text2Image.from_checkpoint(args.ckpt, device=args.device)
    sampler = sampler_preset(pipe.sampler, args.sampler, steps=args.steps, guidance_scale=args.scale)
    init = load_image(args.init_img, pipe.autoencoder.downsample_factor, args.H, args.W)
    pipe.check_request(sampler, *init.shape[-2:])
    outdir = Path(args.outdir)
    sample_dir = outdir / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    base_count = len(list(sample_dir.glob("*.png")))
    grid_count = len(list(outdir.glob("grid-*.png")))

    batches = [(p, it) for it in range(args.n_iter) for p in prompts]
    steps = img2img_steps(args.strength, sampler.steps)
    bar = tqdm(total=len(batches) * steps, desc=f"{sampler.name} x{steps}", unit="step")
    rows, written, k = [], [], 0
    for prompt, _ in batches:
        seeds = [args.seed + k + i for i in range(args.n_samples)]
        images = pipe.img2img(
            init.expand(args.n_samples, -1, -1, -1),
            [prompt] * args.n_samples,
            seeds,
            strength=args.strength,
            sampler=sampler,
            negative_prompt=args.negative_prompt,
            callback=lambda _: bar.update(1),
        )
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
    logging.getLogger("img2img").info(
        "wrote %d images to %s and the grid %s", len(written), sample_dir, grid_path
    )
    return written


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        sys.exit(f"error: {e}")
