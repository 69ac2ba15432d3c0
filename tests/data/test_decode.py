"""JPEG draft decoding (ldm/data/decode.py): cheaper, and the same picture after the resize."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ldm.data.decode import open_image, pil_to_uint8, resize_and_crop


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
    drafted, _ = resize_and_crop(pil_to_uint8(open_image(data, resolution)[0]), resolution)
    full, _ = resize_and_crop(pil_to_uint8(open_image(data, None)[0]), resolution)
    difference = (drafted.double() - full.double()).abs()
    assert drafted.shape == full.shape == (3, resolution, resolution)
    assert difference.mean() < 2.0  # of 255: the DCT downscale is a good antialiasing filter


@pytest.mark.parametrize(("size", "resolution"), [((800, 600), 64), ((530, 400), 256), ((40, 30), 64)])
def test_resize_and_crop_agrees_with_pil_bicubic(size, resolution):
    image = open_image(photo_jpeg(*size, seed=2), None)[0]
    scale = resolution / min(image.size)
    resized = image.resize(
        (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    left, top = (resized.width - resolution) // 2, (resized.height - resolution) // 2
    reference = pil_to_uint8(resized.crop((left, top, left + resolution, top + resolution))).double()
    ours, corner = resize_and_crop(pil_to_uint8(image), resolution)
    assert corner == (top, left)
    difference = (ours.double() - reference).abs()
    assert difference.max() <= 2 and difference.mean() < 0.05  # rounding of two bicubic implementations


def test_png_is_never_drafted():
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (10, 20, 30)).save(buffer, format="PNG")
    image, original_size = open_image(buffer.getvalue(), 64)
    assert image.size == (400, 300) and original_size == (300, 400)
