"""Super-resolution on the shapes validation split: the model against bicubic and Lanczos upsampling.

    python benchmarks/eval_sr.py --ckpt outputs/<shapes_sr run>/checkpoints/last.ckpt --out sr.json

Each validation image is rendered at the model's resolution (64 px for experiment=shapes_sr),
downsampled by its factor as in training (bicubic, antialiased) and stored as 8-bit pixels, as an
input file would be. Three methods upsample the same inputs: the model (prompted with the image's
caption, its input noised to --noise-level), PIL's bicubic and PIL's Lanczos; the row "autoencoder" is
the originals encoded and decoded by the model's own autoencoder, the most its latents can give. Every
output is rounded to 8 bits and compared with the original: PSNR and SSIM (torchmetrics, data range 1,
the mean over images), and the shapes evaluator's colour and shape accuracy against the rendered
labels, reported for the originals too (the issue's bar: at least the originals' minus 2 points).
Prints a Markdown table; --out writes the JSON.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ldm.cli import run_command
from ldm.conditioning.low_resolution import downsample
from ldm.data.shapes import generate_shapes
from ldm.eval.evaluate import to_uint8
from ldm.eval.image_tasks import evaluation_parser, from_uint8, run_evaluation
from ldm.eval.shapes import score_images
from ldm.samplers.presets import sampler_from_args
from ldm.upscaler import Upscaler

log = logging.getLogger("eval_sr")

METHODS = ("autoencoder", "model", "bicubic", "lanczos")
PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags: the shared ones and --noise-level."""
    p = evaluation_parser("benchmarks/eval_sr.py", __doc__, "a super-resolution")
    p.add_argument(
        "--noise-level", type=int, default=None, help="the input's noise level (default: the model's)"
    )
    return p.parse_args(argv)


def pil_upsample(low_res: list[np.ndarray], factor: int, method: str) -> list[np.ndarray]:
    """8-bit images upsampled by `factor` with PIL's bicubic or Lanczos filter."""
    out = []
    for pixels in low_res:
        h, w = pixels.shape[:2]
        out.append(np.asarray(Image.fromarray(pixels).resize((w * factor, h * factor), PIL_FILTERS[method])))
    return out


def image_metrics(outputs: list[np.ndarray], originals: list[np.ndarray]) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over images of 8-bit outputs against 8-bit originals."""
    fake, real = from_uint8(outputs), from_uint8(originals)
    psnr = peak_signal_noise_ratio(fake, real, data_range=1.0, dim=(1, 2, 3), reduction="none")
    ssim = structural_similarity_index_measure(fake, real, data_range=1.0, reduction="none")
    return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}


def evaluate(args: argparse.Namespace) -> dict:
    """Upsample the validation split every way and measure; returns the result (see the docstring)."""
    upscaler = Upscaler.from_checkpoint(args.ckpt, device=args.device)
    sampler = sampler_from_args(upscaler.sampler, args)
    noise_level = upscaler.noise_level if args.noise_level is None else args.noise_level
    resolution, factor = upscaler.pipe.image_size, upscaler.factor
    samples = list(generate_shapes(args.n, resolution=resolution, seed=args.data_seed, split="val"))
    originals = [np.asarray(s.image) for s in samples]
    low_res = to_uint8(downsample(from_uint8(originals), factor).clamp(0, 1))  # 8-bit, as an input file
    upscaler.check_request(sampler, *low_res[0].shape[:2])
    outputs = {method: pil_upsample(low_res, factor, method) for method in PIL_FILTERS}
    outputs["model"], outputs["autoencoder"] = [], []
    pipe = upscaler.pipe
    for start in range(0, args.n, args.batch_size):
        chunk = range(start, min(start + args.batch_size, args.n))
        outputs["autoencoder"] += to_uint8(pipe.decode(pipe.encode(from_uint8([originals[i] for i in chunk]))))
        images = upscaler(
            from_uint8([low_res[i] for i in chunk]),
            [samples[i].caption for i in chunk],
            [args.seed + i for i in chunk],
            noise_level=noise_level,
            sampler=sampler,
        )
        outputs["model"] += to_uint8(images)
        log.info("upscaled %d of %d images", len(outputs["model"]), args.n)
    colors, shapes = [s.metadata["color"] for s in samples], [s.metadata["shape"] for s in samples]
    rows = {}
    for method in ("original", *METHODS):
        pixels = originals if method == "original" else outputs[method]
        score = score_images(pixels, colors, shapes)
        metrics = {} if method == "original" else image_metrics(pixels, originals)
        accuracy = {"color_accuracy": score.color_accuracy, "shape_accuracy": score.shape_accuracy}
        rows[method] = {**metrics, **accuracy}
    return {
        "ckpt": str(args.ckpt),
        "n": args.n,
        "resolution": resolution,
        "factor": factor,
        "noise_level": noise_level,
        "sampler": vars(sampler),
        "rows": rows,
    }


def markdown_table(result: dict) -> str:
    """The rows of a result as a Markdown table (accuracies in percent)."""
    lines = [
        f"x{result['factor']} to {result['resolution']} px, {result['n']} validation images, "
        f"noise level {result['noise_level']}",
        "",
        "| method | PSNR dB | SSIM | color acc. % | shape acc. % |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, r in result["rows"].items():
        psnr = f"{r['psnr']:.2f}" if "psnr" in r else "-"
        ssim = f"{r['ssim']:.4f}" if "ssim" in r else "-"
        color, shape = 100 * r["color_accuracy"], 100 * r["shape_accuracy"]
        lines.append(f"| {method} | {psnr} | {ssim} | {color:.1f} | {shape:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    return run_evaluation(parse_args(argv), evaluate, markdown_table)


if __name__ == "__main__":
    run_command(main)
