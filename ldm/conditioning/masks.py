"""Random inpainting masks for training: rectangles and thick strokes, and some full and empty masks.

SD's inpainting models were trained on synthetic masks (LaMa's generator, Suvorov et al. 2022:
thick strokes and boxes of random sizes) and, in a quarter of the cases, on a mask that covers
the whole image, so that the model keeps its text-to-image ability. Here a mask is 1 where the
image is to be redrawn and 0 where it is kept, shape (b, 1, H, W), one mask per sample; every
random number a sample's mask takes comes from that sample's generator (``ldm.samplers.noise``).

- rectangles: 1 to 3 axis-aligned boxes, sides 15-70% of the image's, centres anywhere;
- strokes: 1 to 3 polylines of 4 segments (a random walk, segments 10-40% of the side long), each
  drawn with its own width (6-20% of the side);
- full (all 1) and empty (all 0) masks in the given shares.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ldm.samplers.noise import Generators, uniform_rows

MAX_SHAPES = 3
"""Largest number of rectangles or strokes in one mask."""
BOX_SIDES = (0.15, 0.7)
"""Range of a rectangle's sides, as fractions of the image's."""
STROKE_VERTICES = 5
"""Vertices of each stroke (segments + 1)."""
SEGMENT_LENGTHS = (0.1, 0.4)
"""Range of a stroke segment's length, as a fraction of the image side."""
STROKE_WIDTHS = (0.06, 0.2)
"""Range of a stroke's width, as a fraction of the image side."""


def check_mask_shares(full: float, empty: float, strokes: float) -> None:
    """Raise unless the shares are probabilities and full + empty <= 1."""
    for name, share in (("mask_full", full), ("mask_empty", empty), ("mask_strokes", strokes)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"image_conditioning.{name} must be in [0, 1], got {share}")
    if full + empty > 1.0:
        raise ValueError(f"image_conditioning.mask_full + mask_empty must be <= 1, got {full} + {empty}")


def _between(u: Tensor, bounds: tuple[float, float]) -> Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _pixel_centres(height: int, width: int, device: torch.device) -> Tensor:
    """(H W, 2) pixel centres as (x, y) fractions of the width and height."""
    ys = (torch.arange(height, device=device) + 0.5) / height
    xs = (torch.arange(width, device=device) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)


def _counts(u: Tensor) -> Tensor:
    """Which of MAX_SHAPES shapes each mask has (1 to MAX_SHAPES, uniformly), from one uniform per mask:
    (n,) -> (n, MAX_SHAPES) bool."""
    count = (u * MAX_SHAPES).floor().clamp(max=MAX_SHAPES - 1) + 1  # (n,)
    return torch.arange(MAX_SHAPES, device=u.device)[None, :] < count[:, None]


def rectangle_masks(u: Tensor, points: Tensor) -> Tensor:
    """Masks of rectangles, (n, H W) bool, from 1 + 4 MAX_SHAPES uniforms per mask (`u`, (n, k))."""
    active = _counts(u[:, 0])  # (n, S)
    box = u[:, 1 : 1 + 4 * MAX_SHAPES].view(-1, MAX_SHAPES, 4)  # (n, S, [cx, cy, w, h])
    centre, half = box[..., :2], _between(box[..., 2:], BOX_SIDES) / 2  # (n, S, 2) each
    inside = ((points[None, None] - centre[:, :, None]).abs() <= half[:, :, None]).all(dim=-1)  # (n, S, P)
    return (inside & active[:, :, None]).any(dim=1)


def stroke_masks(u: Tensor, points: Tensor) -> Tensor:
    """Masks of thick strokes, (n, H W) bool, from 1 + MAX_SHAPES (3 + 2 segments) uniforms per mask."""
    n, segments = u.shape[0], STROKE_VERTICES - 1
    active = _counts(u[:, 0])  # (n, S)
    params = u[:, 1 : 1 + MAX_SHAPES * (3 + 2 * segments)].view(n, MAX_SHAPES, 3 + 2 * segments)
    start, width = params[..., :2], _between(params[..., 2], STROKE_WIDTHS)  # (n, S, 2), (n, S)
    angle = 2 * math.pi * params[..., 3 : 3 + segments]  # (n, S, segments)
    length = _between(params[..., 3 + segments :], SEGMENT_LENGTHS)
    steps = torch.stack([angle.cos(), angle.sin()], dim=-1) * length[..., None]  # (n, S, segments, 2)
    vertices = torch.cat([start[:, :, None], start[:, :, None] + steps.cumsum(dim=2)], dim=2)
    a, b = vertices[:, :, :-1, None], vertices[:, :, 1:, None]  # segment ends, (n, S, segments, 1, 2)
    p = points[None, None, None]  # (1, 1, 1, P, 2)
    ab = b - a
    # Distance from each point to each segment: project onto the segment, clamp to its ends.
    t = (((p - a) * ab).sum(-1) / ab.square().sum(-1).clamp(min=1e-12)).clamp(0, 1)  # (n, S, segments, P)
    distance = (p - (a + t[..., None] * ab)).norm(dim=-1)
    inside = (distance <= width[:, :, None, None] / 2).any(dim=2)  # (n, S, P)
    return (inside & active[:, :, None]).any(dim=1)


def random_masks(
    n: int,
    height: int,
    width: int,
    *,
    full: float,
    empty: float,
    strokes: float,
    generator: Generators = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """n random masks (n, 1, H, W) of 0.0 and 1.0 (1: redraw): full with probability `full`, empty with
    `empty`, else strokes with probability `strokes` and rectangles otherwise."""
    check_mask_shares(full, empty, strokes)
    device = torch.device(device)
    kind = uniform_rows(n, 2, generator, device)
    box_u = uniform_rows(n, 1 + 4 * MAX_SHAPES, generator, device)
    stroke_u = uniform_rows(n, 1 + MAX_SHAPES * (3 + 2 * (STROKE_VERTICES - 1)), generator, device)
    points = _pixel_centres(height, width, device)
    drawn = torch.where(
        (kind[:, 1] < strokes)[:, None], stroke_masks(stroke_u, points), rectangle_masks(box_u, points)
    )
    is_full, is_empty = kind[:, 0] < full, (kind[:, 0] >= full) & (kind[:, 0] < full + empty)
    masks = (drawn | is_full[:, None]) & ~is_empty[:, None]
    return masks.view(n, 1, height, width).float()
