"""``python -m ldm.sample txt2img|img2img|upscale|inpaint``: images from a stage-2 checkpoint, SD's flags.

    python -m ldm.sample txt2img --ckpt outputs/<run>/checkpoints/last.ckpt --prompt "a red circle" \\
        --n_samples 8 --outdir out/
    python -m ldm.sample img2img --ckpt outputs/<run>/checkpoints/last.ckpt --init-img in.png \\
        --prompt "a blue square" --strength 0.75 --n_samples 4 --outdir out/
    python -m ldm.sample upscale --ckpt <super-resolution run>/checkpoints/last.ckpt --init-img small.png \\
        --prompt "a red circle" --noise-level 20 --outdir out/
    python -m ldm.sample inpaint --ckpt <inpainting run>/checkpoints/last.ckpt --init-img in.png \\
        --mask mask.png --prompt "a blue square" --outdir out/

Writes every image to OUTDIR/samples/NNNNN.png, numbered on from what is there, and one grid per
call to OUTDIR/grid-NNNN.png (rows: prompt x iteration, columns: samples). Image k of a call uses
seed --seed + k. img2img encodes the image, noises it to the step that --strength picks (1: the
whole schedule, from noise; 0: the image back) and denoises it with the sampler. upscale (a
super-resolution checkpoint) writes images --init-img's size times the model's factor, its input
noised to --noise-level (default: the model's); inpaint (an inpainting checkpoint) redraws the
part of --init-img where --mask (same size) is white. Each command refuses a checkpoint of another
kind. (``scripts/txt2img.py``, ``img2img.py``, ``upscale.py`` and ``inpaint.py`` run these commands.)
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from ldm.cli import command_parser, run_command
from ldm.inpainter import Inpainter
from ldm.pipeline import Text2Image, img2img_steps
from ldm.samplers.guidance import check_guidance_interval
from ldm.samplers.presets import add_sampler_args, sampler_from_args
from ldm.upscaler import Upscaler

log = logging.getLogger(__name__)

Generate = Callable[[str, list[int], Callable[[Any], None]], torch.Tensor]
"""``generate(prompt, seeds, callback)``: one image per seed, [B, 3, H, W] in [0, 1]."""


def add_sampling_args(p: argparse.ArgumentParser, *, outdir: str, steps_help: str) -> None:
    """The flags txt2img and img2img share (those of Stable Diffusion's scripts)."""
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
    add_sampler_args(p, steps_help=steps_help)
    p.add_argument("--seed", type=int, default=42, help="seed of the first image; image k uses seed + k")
    p.add_argument("--device", type=str, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the denoiser and autoencoder, weights frozen in (the first batch compiles)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="compile, and replay each denoiser call as a CUDA graph (CUDA only; fewer kernel launches)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m ldm.sample``: one subcommand per mode."""
    p = command_parser("python -m ldm.sample", __doc__)
    modes = p.add_subparsers(dest="mode", required=True)
    txt = modes.add_parser("txt2img", help="images from a prompt", description="Images from a prompt.")
    add_sampling_args(
        txt, outdir="outputs/txt2img-samples", steps_help="sampling steps (default: the sampler's)"
    )
    txt.add_argument("--H", type=int, default=None, help="image height (default: the training resolution)")
    txt.add_argument("--W", type=int, default=None, help="image width (default: the training resolution)")
    img = modes.add_parser(
        "img2img", help="an image redrawn toward a prompt", description="An image redrawn toward a prompt."
    )
    img.add_argument("--init-img", type=str, required=True, help="the starting image (png, jpg, ...)")
    img.add_argument(
        "--strength",
        type=float,
        default=0.75,
        help="how much to change it: 0 keeps it, 1 redraws it from noise",
    )
    add_sampling_args(
        img,
        outdir="outputs/img2img-samples",
        steps_help="sampling steps of the full schedule (default: the sampler's)",
    )
    img.add_argument(
        "--H",
        type=int,
        default=None,
        help="resize the image to this height (default: its own, rounded down to the autoencoder factor)",
    )
    img.add_argument("--W", type=int, default=None, help="resize the image to this width (likewise)")
    up = modes.add_parser(
        "upscale",
        help="a low-resolution image upscaled (super-resolution model)",
        description="A low-resolution image upscaled by a super-resolution model, guided by a prompt.",
    )
    up.add_argument("--init-img", type=str, required=True, help="the low-resolution image (png, jpg, ...)")
    up.add_argument(
        "--noise-level",
        type=int,
        default=None,
        help="noise level added to the input, 0-999: more lets the model redraw more (default: the model's)",
    )
    steps_help = "sampling steps (default: the sampler's)"
    add_sampling_args(up, outdir="outputs/upscale-samples", steps_help=steps_help)
    paint = modes.add_parser(
        "inpaint",
        help="the masked part of an image redrawn (inpainting model)",
        description="The part of an image where the mask is white redrawn by an inpainting model.",
    )
    paint.add_argument("--init-img", type=str, required=True, help="the image (png, jpg, ...)")
    paint.add_argument(
        "--mask", type=str, required=True, help="a mask as large as the image: white = redraw, black = keep"
    )
    paint.add_argument(
        "--paste-back",
        type=float,
        nargs="?",
        const=0.0,
        default=None,
        metavar="BLUR",
        help="paste the input back outside the mask after decoding, blended over a Gaussian of BLUR pixels "
        "outside it (default 0: a hard edge); without it the model's own rendering of the kept part is written",
    )
    add_sampling_args(paint, outdir="outputs/inpaint-samples", steps_help=steps_help)
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse counts, sizes, scales and strengths that cannot be sampled, naming the flag."""
    for name in ("n_samples", "n_iter", "steps", "H", "W"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if args.scale is not None and not args.scale >= 0:
        raise ValueError(f"--scale must be >= 0, got {args.scale}")
    if args.rescale is not None and not 0.0 <= args.rescale <= 1.0:
        raise ValueError(f"--rescale must be in [0, 1], got {args.rescale}")
    interval = getattr(args, "guidance_interval", None)
    try:
        check_guidance_interval(interval)
    except ValueError:
        low, high = interval
        raise ValueError(f"--guidance-interval needs 0 <= LOW < HIGH, got {low:g} {high:g}") from None
    strength = getattr(args, "strength", None)
    if strength is not None and not 0.0 <= strength <= 1.0:
        raise ValueError(f"--strength must be in [0, 1], got {strength}")
    paste_back = getattr(args, "paste_back", None)
    if paste_back is not None and not paste_back >= 0:
        raise ValueError(f"--paste-back takes a mask blur >= 0 pixels, got {paste_back:g}")
    noise_level = getattr(args, "noise_level", None)
    if noise_level is not None and not 0 <= noise_level <= 999:
        raise ValueError(f"--noise-level must be in [0, 999], got {noise_level}")


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts: --prompt, or each line of --from-file. An empty prompt is refused (it would ask for
    unconditional samples, which nobody asks for by leaving a line blank)."""
    if args.from_file:
        path = Path(args.from_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        lines = path.read_text(encoding="utf-8").rstrip().splitlines()  # trailing blank lines are no prompts
        if not lines:
            raise ValueError(f"prompt file {path} has no prompts")
        empty = [n for n, line in enumerate(lines, start=1) if not line.strip()]
        if empty:
            where = f"line{'s' if len(empty) > 1 else ''} {', '.join(map(str, empty))}"
            raise ValueError(f"prompt file {path} has an empty prompt on {where}: one prompt per line")
        return [line.strip() for line in lines]
    if args.prompt is None or not args.prompt.strip():
        raise ValueError('empty prompt: give --prompt "..." or --from-file FILE')
    return [args.prompt.strip()]


def write_samples(
    args: argparse.Namespace, prompts: list[str], steps: int, desc: str, generate: Generate
) -> list[Path]:
    """For every prompt x iteration, ``generate(prompt, seeds, callback)`` a batch; write images and a grid.

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
    log.info("wrote %d images to %s and the grid %s", len(written), sample_dir, grid_path)
    return written


def open_image(path: str | Path, mode: str = "RGB", what: str = "init image") -> Image.Image:
    """The image file at `path` in PIL `mode`; a missing or unreadable file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return Image.open(path).convert(mode)
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file") from None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as [1, C, H, W] in [0, 1]."""
    return pil_to_tensor(image).float().div(255).unsqueeze(0)


def load_image(path: str | Path, factor: int, height: int | None, width: int | None) -> torch.Tensor:
    """The image at `path` as [1, 3, H, W] in [0, 1], resized to (height, width) or to multiples of
    `factor`; an unreadable image is a ValueError naming the file."""
    image = open_image(path)
    w, h = image.size
    size = (width or w - w % factor, height or h - h % factor)
    if min(size) < factor:
        raise ValueError(f"image {path} ({w}x{h}) is smaller than the autoencoder factor {factor}")
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return to_tensor(image)


def txt2img(args: argparse.Namespace) -> list[Path]:
    """Sample the prompts of `args` (txt2img's flags) and write them; returns the images written."""
    check_arguments(args)
    prompts = read_prompts(args)
    pipe = Text2Image.from_checkpoint(
        args.ckpt, device=args.device, compile=args.compile, cuda_graphs=args.cuda_graphs
    )
    sampler = sampler_from_args(pipe.sampler, args)
    pipe.check_request(sampler, args.H, args.W, args.negative_prompt)

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

    return write_samples(args, prompts, sampler.steps, f"{sampler.name} x{sampler.steps}", generate)


def img2img(args: argparse.Namespace) -> list[Path]:
    """Redraw the init image of `args` (img2img's flags) toward each prompt; returns the images written."""
    check_arguments(args)
    prompts = read_prompts(args)
    pipe = Text2Image.from_checkpoint(
        args.ckpt, device=args.device, compile=args.compile, cuda_graphs=args.cuda_graphs
    )
    sampler = sampler_from_args(pipe.sampler, args)
    init = load_image(args.init_img, pipe.autoencoder.downsample_factor, args.H, args.W)
    pipe.check_request(sampler, *init.shape[-2:], args.negative_prompt)

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
    return write_samples(args, prompts, steps, f"{sampler.name} x{steps}", generate)


def upscale(args: argparse.Namespace) -> list[Path]:
    """Upscale the init image of `args` (upscale's flags) for each prompt; returns the images written."""
    check_arguments(args)
    prompts = read_prompts(args)
    upscaler = Upscaler.from_checkpoint(
        args.ckpt, device=args.device, compile=args.compile, cuda_graphs=args.cuda_graphs
    )
    sampler = sampler_from_args(upscaler.sampler, args)
    low_res = to_tensor(open_image(args.init_img))
    upscaler.check_request(sampler, *low_res.shape[-2:], args.negative_prompt)

    def generate(prompt: str, seeds: list[int], callback: Callable[[Any], None]) -> torch.Tensor:
        return upscaler(
            low_res.expand(len(seeds), -1, -1, -1),
            [prompt] * len(seeds),
            seeds,
            noise_level=args.noise_level,
            sampler=sampler,
            negative_prompt=args.negative_prompt,
            callback=callback,
        )

    return write_samples(args, prompts, sampler.steps, f"{sampler.name} x{sampler.steps}", generate)


def inpaint(args: argparse.Namespace) -> list[Path]:
    """Redraw the masked part of the init image of `args` (inpaint's flags) toward each prompt; returns
    the images written."""
    check_arguments(args)
    prompts = read_prompts(args)
    image, mask = open_image(args.init_img), open_image(args.mask, "L", "mask")
    if mask.size != image.size:
        raise ValueError(
            f"the mask {args.mask} is {mask.size[0]}x{mask.size[1]} pixels but the image {args.init_img} "
            f"{image.size[0]}x{image.size[1]}: they must be the same size"
        )
    inpainter = Inpainter.from_checkpoint(
        args.ckpt, device=args.device, compile=args.compile, cuda_graphs=args.cuda_graphs
    )
    sampler = sampler_from_args(inpainter.sampler, args)
    init, masks = to_tensor(image), to_tensor(mask)
    inpainter.pipe.check_request(sampler, *init.shape[-2:], args.negative_prompt)

    def generate(prompt: str, seeds: list[int], callback: Callable[[Any], None]) -> torch.Tensor:
        n = len(seeds)
        return inpainter(
            init.expand(n, -1, -1, -1),
            masks.expand(n, -1, -1, -1),
            [prompt] * n,
            seeds,
            sampler=sampler,
            negative_prompt=args.negative_prompt,
            callback=callback,
            paste=args.paste_back,
        )

    return write_samples(args, prompts, sampler.steps, f"{sampler.name} x{sampler.steps}", generate)


MODES = {"txt2img": txt2img, "img2img": img2img, "upscale": upscale, "inpaint": inpaint}
"""Each subcommand's function."""


def run(argv: list[str] | None = None) -> list[Path]:
    """Parse ``txt2img|img2img|upscale|inpaint FLAGS`` and sample; returns the images written (raises on
    bad input)."""
    args = build_parser().parse_args(argv)
    return MODES[args.mode](args)


def main(argv: list[str] | None = None) -> None:
    """The ``python -m ldm.sample`` / ``ldm-sample`` command."""
    run_command(run, argv)


if __name__ == "__main__":
    main()
