"""Inpainting on the shapes validation split: replace the shape by another, keep the rest.

    python benchmarks/eval_inpaint.py --ckpt outputs/<shapes_inpaint run>/checkpoints/last.ckpt \
        --out inpaint.json

Each validation image (rendered at the model's resolution) gets a mask over its shape: the shape's
bounding box from the set's metadata, widened to whole cells of the autoencoder's latent grid (f
pixels), so that the old shape is gone from what the model sees. The prompt asks for another colour
and another shape ("a {color} {shape}", both drawn at random from the ones that differ, seeded).
Reported: how often the shapes evaluator finds the asked colour and the asked shape, and the PSNR
against the input outside the mask, pooled over all those pixels of all images, beside the
autoencoder's own reconstruction PSNR on the same pixels (encode, decode; the best the model's
latents can do there), and both again beyond one latent cell of the mask and in each of the three
one-pixel rings next to it. Images whose mask covers everything count for the hit rates only.

Also reported, without sampling, the bound of any inpainter that works in this autoencoder's latent
space: the ideal result (the input with the asked shape drawn in the old shape's box, so equal to the
input outside the mask) encoded and decoded, and the input's latents with only the masked cells
taken from the ideal result's, decoded. The first is what a perfect model could reach outside the
mask; the second, what keeping the input's latents there gives: the latents are not local (each
cell carries some of its neighbours' content), so a splice decodes worse than a whole new encoding.
Prints a Markdown table; --out writes the JSON.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ldm.cli import run_command
from ldm.data.shapes import (
    COLORS,
    SHAPES,
    SUPERSAMPLE,
    ShapeLayout,
    ShapeSample,
    generate_shapes,
    render_shape,
)
from ldm.eval.evaluate import to_uint8
from ldm.eval.image_tasks import evaluation_parser, from_uint8, run_evaluation
from ldm.eval.shapes import score_images
from ldm.inpainter import Inpainter
from ldm.samplers.presets import sampler_from_args

log = logging.getLogger("eval_inpaint")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (--seed also draws the target colours and shapes)."""
    return evaluation_parser("benchmarks/eval_inpaint.py", __doc__, "an inpainting").parse_args(argv)


def cells(centre: float, size: float, side: int, cell: int) -> slice:
    """The pixels of whole `cell`-wide cells that cover [centre - size / 2, centre + size / 2] (fractions)."""
    low = math.floor((centre - size / 2) * side / cell) * cell
    high = math.ceil((centre + size / 2) * side / cell) * cell
    return slice(max(low, 0), min(high, side))


def shape_mask(sample: ShapeSample, cell: int) -> torch.Tensor:
    """[1, H, W]: 1 over the shape's bounding box widened to whole `cell` x `cell` cells."""
    meta, side = sample.metadata, sample.metadata["width"]
    mask = torch.zeros(1, side, side)
    mask[:, cells(meta["cy"], meta["size"], side, cell), cells(meta["cx"], meta["size"], side, cell)] = 1
    return mask


def other_targets(samples: list[ShapeSample], seed: int) -> list[tuple[str, str]]:
    """For each sample a (colour, shape) pair that differs from its own in both, drawn uniformly."""
    rng = np.random.default_rng(seed)
    targets = []
    for s in samples:
        colors = [c for c in COLORS if c != s.metadata["color"]]
        shapes = [x for x in SHAPES if x != s.metadata["shape"]]
        targets.append((colors[rng.integers(len(colors))], shapes[rng.integers(len(shapes))]))
    return targets


def ideal_results(samples: list[ShapeSample], targets: list[tuple[str, str]]) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1]: each sample's image with its shape replaced by the target colour and
    shape, drawn in the same box (so the image is unchanged outside the box)."""
    ideal = []
    for sample, (color, shape) in zip(samples, targets, strict=True):
        meta = sample.metadata
        canvas = meta["width"] * SUPERSAMPLE
        side = round(meta["size"] * canvas)
        left, top = round(meta["cx"] * canvas - side / 2), round(meta["cy"] * canvas - side / 2)
        layout = ShapeLayout(shape, color, side, left, top, meta["width"], template=0)
        ideal.append(np.asarray(render_shape(layout)))
    return from_uint8(ideal)


def latent_bound(
    encode: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    ideal: torch.Tensor,
    masks: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ideal results through the autoencoder, and the input's latents with the masked cells' latents
    taken from the ideal results', decoded (both [B, 3, H, W] in [0, 1]; `masks` cover whole cells)."""
    with torch.no_grad():
        inputs, wanted = encode(images), encode(ideal)
        cell = images.shape[-1] // inputs.shape[-1]
        masked_cells = F.max_pool2d(masks, cell).to(inputs.device) > 0.5
        return decode(wanted), decode(torch.where(masked_cells, wanted, inputs))


def pooled_psnr(outputs: torch.Tensor, inputs: torch.Tensor, keep: torch.Tensor) -> float:
    """PSNR (dB, peak 1) of the mean squared error over the pixels where `keep` is 1, all images pooled."""
    squared = (outputs - inputs).square() * keep  # keep broadcasts over the 3 channels
    mse = squared.sum() / (3 * keep.sum())
    return float(10 * torch.log10(1 / mse)) if mse > 0 else math.inf


RINGS = 3
"""Rings of pixels next to the mask that the evaluation reports apart (1: the pixels touching it)."""


def rings(masks: torch.Tensor, count: int = RINGS) -> list[torch.Tensor]:
    """[B, 1, H, W] masks of the kept pixels at Chebyshev distance 1, 2, ..., `count` from the mask."""
    grown = [masks] + [F.max_pool2d(masks, 2 * d + 1, stride=1, padding=d) for d in range(1, count + 1)]
    return [grown[d] - grown[d - 1] for d in range(1, count + 1)]


def ring_psnrs(outputs: torch.Tensor, inputs: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """PSNR against the input in each ring next to the mask (``rings``), all images pooled."""
    return [pooled_psnr(outputs, inputs, ring) if ring.sum() > 0 else math.nan for ring in rings(masks)]


def evaluate(args: argparse.Namespace) -> dict:
    """Inpaint the validation split and measure; returns the result (see the module docstring)."""
    inpainter = Inpainter.from_checkpoint(args.ckpt, device=args.device)
    sampler = sampler_from_args(inpainter.sampler, args)
    pipe = inpainter.pipe
    resolution, cell = pipe.image_size, pipe.autoencoder.downsample_factor
    pipe.check_request(sampler, resolution, resolution)
    samples = list(generate_shapes(args.n, resolution=resolution, seed=args.data_seed, split="val"))
    images = from_uint8([np.asarray(s.image) for s in samples])
    masks = torch.stack([shape_mask(s, cell) for s in samples])
    targets = other_targets(samples, args.seed)
    ideal = ideal_results(samples, targets)
    results, reconstructions, ideal_decoded, composites = [], [], [], []
    for start in range(0, args.n, args.batch_size):
        chunk = slice(start, min(start + args.batch_size, args.n))
        prompts = [f"a {color} {shape}" for color, shape in targets[chunk]]
        seeds = [args.seed + i for i in range(chunk.start, chunk.stop)]
        results.append(inpainter(images[chunk], masks[chunk], prompts, seeds, sampler=sampler))
        with torch.no_grad():
            reconstructions.append(pipe.decode(pipe.encode(images[chunk])))
        decoded, composite = latent_bound(pipe.encode, pipe.decode, images[chunk], ideal[chunk], masks[chunk])
        ideal_decoded.append(decoded)
        composites.append(composite)
        log.info("inpainted %d of %d images", chunk.stop, args.n)
    # 8-bit, as written files would be
    result, reconstruction = (to_uint8(torch.cat(x)) for x in (results, reconstructions))
    score = score_images(result, [t[0] for t in targets], [t[1] for t in targets])
    keep = 1 - masks
    beyond = 1 - F.max_pool2d(masks, 2 * cell + 1, stride=1, padding=cell)  # f pixels or more away
    outputs, reconstructed = from_uint8(result), from_uint8(reconstruction)
    ideal_decoded, composite = (from_uint8(to_uint8(torch.cat(x))) for x in (ideal_decoded, composites))
    return {
        "ckpt": str(args.ckpt),
        "n": args.n,
        "resolution": resolution,
        "sampler": vars(sampler),
        "asked_color_rate": score.color_accuracy,
        "asked_shape_rate": score.shape_accuracy,
        "psnr_outside_mask": pooled_psnr(outputs, images, keep),
        "autoencoder_psnr_outside_mask": pooled_psnr(reconstructed, images, keep),
        "psnr_beyond_one_cell": pooled_psnr(outputs, images, beyond),
        "autoencoder_psnr_beyond_one_cell": pooled_psnr(reconstructed, images, beyond),
        "psnr_rings": ring_psnrs(outputs, images, masks),
        "autoencoder_psnr_rings": ring_psnrs(reconstructed, images, masks),
        "ideal_result_psnr_outside_mask": pooled_psnr(ideal_decoded, images, keep),
        "ideal_latents_psnr_outside_mask": pooled_psnr(composite, images, keep),
        "mask_fraction": float(masks.mean()),
        "fully_masked_images": int((keep.flatten(1).sum(1) == 0).sum()),
    }


def markdown_table(result: dict) -> str:
    """A result as a Markdown table."""
    gap = result["psnr_outside_mask"] - result["autoencoder_psnr_outside_mask"]
    return (
        f"{result['n']} validation images at {result['resolution']} px, masks over "
        f"{100 * result['mask_fraction']:.1f}% of the pixels ({result['fully_masked_images']} images "
        "fully)\n\n| asked color % | asked shape % | PSNR outside mask dB | autoencoder PSNR there dB | "
        "difference dB |\n"
        "|---:|---:|---:|---:|---:|\n"
        f"| {100 * result['asked_color_rate']:.1f} | {100 * result['asked_shape_rate']:.1f} | "
        f"{result['psnr_outside_mask']:.2f} | {result['autoencoder_psnr_outside_mask']:.2f} | {gap:+.2f} |\n\n"
        f"Beyond one latent cell of the mask: {result['psnr_beyond_one_cell']:.2f} dB (the autoencoder's "
        f"{result['autoencoder_psnr_beyond_one_cell']:.2f} dB)\n\n"
        "In the rings of pixels next to the mask (1 px away, 2 px, ...): "
        + ", ".join(
            f"{ours:.2f} dB (autoencoder {theirs:.2f})"
            for ours, theirs in zip(result["psnr_rings"], result["autoencoder_psnr_rings"], strict=True)
        )
        + "\n\n"
        "The bound of a perfect latent-space inpainter, outside the mask: the ideal result encoded and "
        f"decoded {result['ideal_result_psnr_outside_mask']:.2f} dB; the input's latents with the ideal "
        f"result's in the masked cells {result['ideal_latents_psnr_outside_mask']:.2f} dB\n"
    )


def main(argv: list[str] | None = None) -> dict:
    return run_evaluation(parse_args(argv), evaluate, markdown_table)


if __name__ == "__main__":
    run_command(main)
