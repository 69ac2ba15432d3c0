"""Colour and shape accuracy of samples generated from shapes prompts, by an analytic classifier.

The classifier needs no learned model: the foreground is the largest bright connected region
(after a light blur that steadies noisy edges); its colour is the pure hue nearest to its mean
colour; its shape is the nearest ideal shape in (fill ratio of the bounding box, mean width of
the top quarter of rows, mean width of the bottom quarter). A triangle is upright, so it is
narrow at the top and wide at the bottom; a circle is equally narrow at both; a square is full.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from ldm.data.shapes import COLORS, SHAPES

SHAPE_PROMPTS: list[tuple[str, str, str]] = [
    (f"a {color} {shape}", color, shape) for color in COLORS for shape in SHAPES
]
"""(prompt, color, shape) for every colour and shape, in the plain caption form."""

FOREGROUND_THRESHOLD = 0.5
"""A pixel is foreground when its brightest channel exceeds this fraction of full scale."""

MIN_FOREGROUND_FRACTION = 0.02
"""Foregrounds smaller than this fraction of the image are not classified."""

# Features of ideal shapes: (area / bounding-box area, mean width of the top quarter of rows and of
# the bottom quarter, both relative to the bounding-box width). For the circle, the quarter width
# is the mean of sqrt(1 - y^2) over y in [1/2, 1] = 2 * (integral over [0, 1] - integral over [0, 1/2]).
_CIRCLE_QUARTER_WIDTH = 2 * (math.pi / 4 - (math.sqrt(3) / 8 + math.pi / 12))  # ~0.614
_SHAPE_PROTOTYPES = {
    "circle": (math.pi / 4, _CIRCLE_QUARTER_WIDTH, _CIRCLE_QUARTER_WIDTH),
    "square": (1.0, 1.0, 1.0),
    "triangle": (0.5, 0.125, 0.875),
}
_HUES = {name: np.array(rgb, dtype=np.float64) / 255.0 for name, rgb in COLORS.items()}


def as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An HxWx3 float array in [0, 1] from a PIL image or an HxWx3 uint8 array."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got an array of shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    return array.astype(np.float64) / 255.0


def connected_components(mask: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    """Labels of the 4-connected regions of a boolean mask (vectorised union-find, numpy only): each
    pixel of the mask gets the flat index of its region's first pixel, the others -1. With ``classes``
    (an integer array of the mask's shape), neighbours join only when their classes are equal."""
    height, width = mask.shape
    index = np.arange(height * width).reshape(height, width)
    # Edges between 4-neighbours that are both in the mask (and of one class).
    first = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel()])
    second = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel()])
    inside = mask.ravel()
    keep = inside[first] & inside[second]
    if classes is not None:
        keep &= classes.ravel()[first] == classes.ravel()[second]
    first, second = first[keep], second[keep]
    parent = index.ravel().copy()
    while True:
        # Hook the root of the larger label under the smaller one across every edge, ...
        root_first, root_second = parent[first], parent[second]
        smaller = np.minimum(root_first, root_second)
        np.minimum.at(parent, root_first, smaller)
        np.minimum.at(parent, root_second, smaller)
        # ... then jump pointers until every pixel points at its root.
        while not np.array_equal(parent[parent], parent):
            parent = parent[parent]
        if np.array_equal(parent[first], parent[second]):
            break
    return np.where(mask, parent.reshape(height, width), -1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask."""
    labels = connected_components(mask)
    roots = labels[mask]
    if roots.size == 0:
        return mask.copy()
    return labels == np.bincount(roots).argmax()


def smooth(brightness: np.ndarray) -> np.ndarray:
    """A light plus-shaped blur (centre weight 2, neighbours 1) that steadies noisy edges before thresholding."""
    padded = np.pad(brightness, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    return (2 * centre + padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]) / 6


def foreground(image: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The pixels (HxWx3 floats) and mask of the shape, or None if it is missing or too small."""
    pixels = as_array(image)
    mask = smooth(pixels.max(axis=2)) > FOREGROUND_THRESHOLD
    if mask.sum() < MIN_FOREGROUND_FRACTION * mask.size:
        return None
    mask = largest_component(mask)
    if mask.sum() < MIN_FOREGROUND_FRACTION * mask.size:
        return None
    return pixels, mask


def nearest_hue(mean_rgb: np.ndarray) -> str:
    """The pure hue nearest to a colour after scaling its brightest channel to 1."""
    normalized = mean_rgb / max(mean_rgb.max(), 1e-8)
    return min(_HUES, key=lambda name: float(np.sum((_HUES[name] - normalized) ** 2)))


def _shape_features(mask: np.ndarray) -> tuple[float, float, float]:
    """(fill ratio of the bounding box, top-quarter width, bottom-quarter width) of a mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # h w
    height, width = box.shape
    fill = box.sum() / box.size
    row_widths = box.sum(axis=1) / width
    quarter = max(1, round(height / 4))
    return float(fill), float(row_widths[:quarter].mean()), float(row_widths[-quarter:].mean())


def shape_of(mask: np.ndarray) -> str:
    """The shape whose prototype features are nearest to the mask's."""
    features = np.array(_shape_features(mask))
    return min(
        _SHAPE_PROTOTYPES,
        key=lambda name: float(np.sum((np.array(_SHAPE_PROTOTYPES[name]) - features) ** 2)),
    )


def classify_color(image: Image.Image | np.ndarray) -> str | None:
    """The colour name of the shape in an image, or None if there is no shape."""
    found = foreground(image)
    if found is None:
        return None
    pixels, mask = found
    return nearest_hue(pixels[mask].mean(axis=0))


def classify_shape(image: Image.Image | np.ndarray) -> str | None:
    """circle, square or triangle for the shape in an image, or None if there is no shape."""
    found = foreground(image)
    return None if found is None else shape_of(found[1])


@dataclass
class ShapesScore:
    """How often generated images show the prompted colour and shape."""

    color_accuracy: float
    shape_accuracy: float
    n: int
    per_prompt: dict[str, dict] = field(default_factory=dict)
    """Per plain prompt ("a red circle"): n, color_accuracy and shape_accuracy."""

    def to_dict(self) -> dict:
        """A JSON-serialisable copy."""
        return asdict(self)


def score_images(
    images: Sequence[Image.Image | np.ndarray], colors: Sequence[str], shapes: Sequence[str]
) -> ShapesScore:
    """Classify each image and compare with its prompted colour and shape (no shape counts as wrong)."""
    if not len(images) == len(colors) == len(shapes):
        raise ValueError(
            f"got {len(images)} images, {len(colors)} colours and {len(shapes)} shapes; the counts must match"
        )
    if len(images) == 0:
        raise ValueError("no images to score")
    for color, shape in zip(colors, shapes, strict=True):
        if color not in COLORS:
            raise ValueError(f"unknown colour '{color}'; available: {', '.join(COLORS)}")
        if shape not in SHAPES:
            raise ValueError(f"unknown shape '{shape}'; available: {', '.join(SHAPES)}")

    tallies: dict[str, list[int]] = {}  # prompt -> [n, colour hits, shape hits]
    for image, color, shape in zip(images, colors, shapes, strict=True):
        found = foreground(image)  # computed once for both questions
        color_hit = found is not None and nearest_hue(found[0][found[1]].mean(axis=0)) == color
        shape_hit = found is not None and shape_of(found[1]) == shape
        tally = tallies.setdefault(f"a {color} {shape}", [0, 0, 0])
        tally[0] += 1
        tally[1] += int(color_hit)
        tally[2] += int(shape_hit)

    return score_from_tallies(tallies)


def score_from_tallies(tallies: dict[str, list[int]]) -> ShapesScore:
    """The score of per-prompt tallies {prompt: [images, colour hits, shape hits]}."""
    n = sum(t[0] for t in tallies.values())
    return ShapesScore(
        color_accuracy=sum(t[1] for t in tallies.values()) / n,
        shape_accuracy=sum(t[2] for t in tallies.values()) / n,
        n=n,
        per_prompt={
            prompt: {"n": count, "color_accuracy": hits / count, "shape_accuracy": shape_hits / count}
            for prompt, (count, hits, shape_hits) in sorted(tallies.items())
        },
    )
