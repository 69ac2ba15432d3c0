"""ldm/conditioning/masks.py: random inpainting masks, checked against masks drawn by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ldm.conditioning.masks import (
    MAX_SHAPES,
    STROKE_VERTICES,
    _pixel_centres,
    random_masks,
    rectangle_masks,
    stroke_masks,
)
from ldm.samplers.noise import per_sample_generators

SEGMENTS = STROKE_VERTICES - 1


def test_one_rectangle_covers_exactly_the_pixels_whose_centres_it_holds():
    # One box (first uniform < 1/3), centre (0.5, 0.27), sides 0.15 + 0.55 u: u = 9/11 -> 0.6, 5/11 -> 0.4.
    u = torch.zeros(1, 1 + 4 * MAX_SHAPES)
    u[0, :5] = torch.tensor([0.0, 0.5, 0.27, 9 / 11, 5 / 11])
    mask = rectangle_masks(u, _pixel_centres(10, 10, torch.device("cpu"))).view(10, 10)
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[1:5, 2:8] = True  # centres (k + 0.5) / 10 within [0.2, 0.8] across and [0.07, 0.47] down
    assert torch.equal(mask, expected)


def test_a_stroke_is_every_pixel_within_half_its_width_of_its_polyline():
    # One stroke from (0.1, 0.5) going right (angle 0) 4 segments of 0.1 + 0.3 u; width 0.06 + 0.14 u.
    params = torch.zeros(1, MAX_SHAPES, 3 + 2 * SEGMENTS)
    params[0, 0, :3] = torch.tensor([0.1, 0.5, 1.0])  # start, width 0.2
    params[0, 0, 3 + SEGMENTS :] = 0.5  # segments 0.25 long: the polyline ends at x = 1.1
    u = torch.cat([torch.zeros(1, 1), params.flatten(1)], dim=1)
    side = 20
    points = _pixel_centres(side, side, torch.device("cpu"))
    mask = stroke_masks(u, points).view(side, side)
    # Closed form: distance to the segment from (0.1, 0.5) to (1.1, 0.5) <= 0.1.
    x, y = points[:, 0].view(side, side), points[:, 1].view(side, side)
    dx = (0.1 - x).clamp(min=0)  # beyond the start; the end lies outside the image
    expected = (dx.square() + (y - 0.5).square()).sqrt() <= 0.1
    assert torch.equal(mask, expected)
    # Rows 8..11 (centres 0.425..0.575) from column 2 on (x >= 0.125), all 4 rows of column 1 (x = 0.075)
    # and the middle 2 of column 0 (x = 0.025, distance sqrt(0.075^2 + 0.025^2) = 0.079).
    assert mask.sum() == 18 * 4 + 4 + 2


def test_full_and_empty_shares_give_all_ones_and_all_zeros():
    full = random_masks(4, 8, 8, full=1.0, empty=0.0, strokes=0.5)
    empty = random_masks(4, 8, 8, full=0.0, empty=1.0, strokes=0.5)
    assert full.shape == (4, 1, 8, 8) and bool((full == 1).all()) and bool((empty == 0).all())


def test_shares_of_kinds_and_per_sample_draws():
    n = 2000
    masks = random_masks(
        n, 16, 16, full=0.25, empty=0.1, strokes=0.5, generator=torch.Generator().manual_seed(0)
    )
    covered = masks.flatten(1).mean(dim=1)
    full, empty = (covered == 1).float().mean().item(), (covered == 0).float().mean().item()
    # Binomial standard deviations at n = 2000: 0.0097 and 0.0067; 4 of them allowed (a drawn mask may
    # also cover everything or nothing, rarely).
    assert abs(full - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n) + 0.01
    assert abs(empty - 0.1) < 4 * math.sqrt(0.1 * 0.9 / n) + 0.01
    batch = random_masks(
        6, 16, 16, full=0.25, empty=0.1, strokes=0.5, generator=per_sample_generators(range(6))
    )
    alone = random_masks(1, 16, 16, full=0.25, empty=0.1, strokes=0.5, generator=per_sample_generators([3]))
    assert torch.equal(batch[3:4], alone)


@pytest.mark.parametrize("shares,message", [
    ((1.5, 0.0, 0.5), r"mask_full must be in \[0, 1\], got 1.5"),
    ((0.7, 0.4, 0.5), r"mask_full \+ mask_empty must be <= 1, got 0.7 \+ 0.4"),
])  # fmt: skip
def test_impossible_shares_are_refused(shares, message):
    full, empty, strokes = shares
    with pytest.raises(ValueError, match=message):
        random_masks(1, 8, 8, full=full, empty=empty, strokes=strokes)
