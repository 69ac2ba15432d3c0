"""Image decoding (ldm/data/decode.py): JPEG draft scales, libjpeg-turbo against PIL, the resize."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data import decode
from ldm.data.decode import (
    dct_reduction,
    decode_image,
    decode_jpeg_turbo,
    open_image,
    pil_to_uint8,
    resize_and_crop,
)


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


@pytest.mark.parametrize(
    ("short_side", "resolution", "reduction"),
    [
        (600, 64, 8),
        (600, 75, 8),
        (600, 76, 4),
        (600, 256, 2),
        (600, 301, 1),
        (511, 256, 2),
        (510, 256, 1),
        (255, 64, 4),
        (4000, 64, 8),
        (600, None, 1),
    ],
)
def test_dct_reduction_keeps_the_short_side_at_least_the_resolution(short_side, resolution, reduction):
    assert dct_reduction(short_side, resolution) == reduction
    assert -(-short_side // reduction) >= (resolution or 0)  # libjpeg rounds scaled sizes up


@pytest.mark.parametrize("size", [(800, 600), (530, 400), (2000, 1500), (97, 131)])
@pytest.mark.parametrize("resolution", [None, 64, 256])
def test_turbo_decode_gives_pils_pixels_at_pils_scale(size, resolution):
    data = photo_jpeg(*size, seed=3)
    ours, original_size = decode_jpeg_turbo(data, resolution)
    reference, reference_size = open_image(data, resolution)
    assert original_size == reference_size == (size[1], size[0])
    assert ours.dtype == torch.uint8 and ours.shape == pil_to_uint8(reference).shape
    # Both bundle libjpeg-turbo with the same (islow, fancy-upsampling) defaults.
    assert (ours.int() - pil_to_uint8(reference).int()).abs().max() <= 1


def test_grayscale_jpeg_decodes_to_three_equal_channels():
    buffer = io.BytesIO()
    Image.new("L", (120, 80), 77).save(buffer, format="JPEG")
    pixels, original_size = decode_jpeg_turbo(buffer.getvalue(), None)
    assert original_size == (80, 120) and pixels.shape == (3, 80, 120)
    assert (pixels.int() - 77).abs().max() <= 1


def test_cmyk_jpeg_and_png_go_through_pil():
    cmyk = io.BytesIO()
    Image.new("CMYK", (64, 48), (10, 200, 30, 40)).save(cmyk, format="JPEG")
    png = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(png, format="PNG")
    for data in (cmyk.getvalue(), png.getvalue()):
        assert decode_jpeg_turbo(data, None) is None
        pixels, original_size = decode_image(data, None)
        assert original_size == (48, 64)
        assert torch.equal(pixels, pil_to_uint8(open_image(data, None)[0]))


def test_a_truncated_jpeg_is_an_error_not_a_partial_image():
    data = photo_jpeg(300, 200)
    assert decode_jpeg_turbo(data[: len(data) // 2], None) is None
    with pytest.raises(OSError):
        decode_image(data[: len(data) // 2], None)


def test_without_simplejpeg_pil_decodes_the_same_pixels(monkeypatch):
    data = photo_jpeg(800, 600, seed=4)
    fast, _ = decode_image(data, 256)
    monkeypatch.setattr(decode, "simplejpeg", None)
    assert decode_jpeg_turbo(data, 256) is None
    slow, _ = decode_image(data, 256)
    assert fast.shape == slow.shape == (3, 300, 400)
    assert (fast.int() - slow.int()).abs().max() <= 1
