"""JPEG draft decoding (ldm/data/decode.py): cheaper, and the same picture after the resize."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ldm.data.decode import open_image, resize_and_crop


def photo_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A smooth random 'photo': low-resolution noise upsampled, with a little grain, as JPEG q90."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    grain = rng.normal(0, 4, (height, width, 3))
    pixels = np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize(("resolution", "decoded_short_side"), [(64, 75), (256, 300), (600, 600)])
def test_draft_decodes_at_the_smallest_scale_that_keeps_the_resolution(resolution, decoded_short_side):
    image, original_size = open_image(photo_jpeg(800, 600), resolution)
    assert original_size == (600, 800)
    assert image.mode == "RGB" and min(image.size) == decoded_short_side  # 1/8, 1/2 and 1/1 of 600
    assert min(image.size) >= resolution


@pytest.mark.parametrize("resolution", [64, 256])
def test_draft_and_full_decode_give_the_same_picture_after_the_resize(resolution):
    data = photo_jpeg(800, 600, seed=1)
    drafted, _ = resize_and_crop(open_image(data, resolution)[0], resolution)
    full, _ = resize_and_crop(open_image(data, None)[0], resolution)
    difference = np.abs(np.asarray(drafted, dtype=np.float64) - np.asarray(full, dtype=np.float64))
    assert drafted.size == full.size == (resolution, resolution)
    assert difference.mean() < 2.0  # of 255: the DCT downscale is a good antialiasing filter


def test_png_is_never_drafted():
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (10, 20, 30)).save(buffer, format="PNG")
    image, original_size = open_image(buffer.getvalue(), 64)
    assert image.size == (400, 300) and original_size == (300, 400)
