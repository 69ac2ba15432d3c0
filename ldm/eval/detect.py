"""An analytic object detector for images of the compose world: every shape, its colour, shape and centre.

The foreground is thresholded as the shapes classifier does (``ldm.eval.shapes``: a light blur of
the brightest channel, then half of full scale) and split into 4-connected regions. A region of
which at least MIN_PURITY of the pixels have one pure hue (each pixel's nearest, after scaling its
brightest channel to 1) is one object; any other region (shapes of two colours that touch, or
noise) gives its connected regions of one hue as objects. Regions smaller than MIN_OBJECT_FRACTION
of the image are debris and ignored. Each object's colour is the hue nearest to its mean colour,
its shape comes from ``ldm.eval.shapes.shape_of`` on its outline upsampled 4x (``upsampled_outline``),
and its centre is its bounding box's, as the data set defines a relation between centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ldm.data.shapes import COLORS
from ldm.eval.shapes import (
    FOREGROUND_THRESHOLD,
    as_array,
    connected_components,
    largest_component,
    nearest_hue,
    shape_of,
    smooth,
)

MIN_OBJECT_FRACTION = 0.008
"""Regions smaller than this fraction of the image are not objects (a small triangle covers about 0.02)."""

UPSAMPLE = 4
"""Shapes are classified on each object's outline at this multiple of the resolution
(``upsampled_outline``): at 32 px a small shape is 6-8 pixels wide, and its thresholded pixels alone
confuse circles, squares and triangles in one case of six (measured on renderings)."""

MIN_PURITY = 0.8
"""A region is one object when this fraction of its pixels has one hue; otherwise its regions of one
hue that are large enough are the objects (shapes of two colours that touch), and noise gives none."""

_HUES = np.array(list(COLORS.values()), dtype=np.float64) / 255.0  # k 3


@dataclass(frozen=True)
class DetectedObject:
    """One shape found in an image."""

    color: str
    shape: str
    cx: float
    """Horizontal centre of the bounding box, as a fraction of the image width."""
    cy: float
    """Vertical centre of the bounding box, as a fraction of the image height."""
    area: float
    """Pixels in the object's region, as a fraction of the image."""

    @property
    def binding(self) -> str:
        """Its colour-shape pair: "red circle"."""
        return f"{self.color} {self.shape}"


def hue_indices(pixels: np.ndarray) -> np.ndarray:
    """Index into COLORS of each pixel's nearest pure hue (HxWx3 floats in [0, 1] -> HxW ints)."""
    normalized = pixels / np.maximum(pixels.max(axis=2, keepdims=True), 1e-8)  # h w 3
    distances = ((normalized[:, :, None, :] - _HUES[None, None]) ** 2).sum(axis=3)  # h w k
    return distances.argmin(axis=2)


def upsampled_outline(brightness: np.ndarray, region: np.ndarray, others: np.ndarray) -> np.ndarray:
    """The region's shape at UPSAMPLE times the resolution: its bounding box and a pixel around it, the
    pixels of ``others`` blanked, upsampled bilinearly and thresholded at half brightness (the largest
    part), so that partly covered edge pixels place the outline between pixels."""
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    top, left = max(rows[0] - 1, 0), max(cols[0] - 1, 0)
    bottom, right = min(rows[-1] + 2, region.shape[0]), min(cols[-1] + 2, region.shape[1])
    crop = np.where(others[top:bottom, left:right], 0.0, brightness[top:bottom, left:right])  # h w
    size = (crop.shape[1] * UPSAMPLE, crop.shape[0] * UPSAMPLE)
    upsampled = Image.fromarray(crop.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return largest_component(np.asarray(upsampled) > FOREGROUND_THRESHOLD)


def _object(pixels: np.ndarray, region: np.ndarray, foreground: np.ndarray) -> DetectedObject:
    """Colour, shape, centre and area of one region (a boolean HxW mask) of the foreground."""
    height, width = region.shape
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    outline = upsampled_outline(pixels.max(axis=2), region, foreground & ~region)
    return DetectedObject(
        color=nearest_hue(pixels[region].mean(axis=0)),
        shape=shape_of(outline),
        cx=(cols[0] + cols[-1] + 1) / 2 / width,
        cy=(rows[0] + rows[-1] + 1) / 2 / height,
        area=float(region.sum() / region.size),
    )


def detect_objects(image: Image.Image | np.ndarray) -> list[DetectedObject]:
    """The objects of an image (PIL or HxWx3 uint8), largest first."""
    pixels = as_array(image)
    mask = smooth(pixels.max(axis=2)) > FOREGROUND_THRESHOLD
    min_pixels = MIN_OBJECT_FRACTION * mask.size
    hues = hue_indices(pixels)
    regions = connected_components(mask)
    single_hue = connected_components(mask, hues)
    labels, sizes = np.unique(regions[mask], return_counts=True)
    objects = []
    for label in labels[sizes >= min_pixels]:
        region = regions == label
        if np.bincount(hues[region]).max() >= MIN_PURITY * region.sum():  # one hue, a few specks of others
            objects.append(_object(pixels, region, mask))
            continue
        parts, part_sizes = np.unique(single_hue[region], return_counts=True)
        objects += [_object(pixels, single_hue == part, mask) for part in parts[part_sizes >= min_pixels]]
    return sorted(objects, key=lambda found: -found.area)
