"""Raw webdataset samples -> training samples: decode, filter, convert to RGB, resize, crop, flip.

A raw sample is webdataset's dict of member bytes (``png``/``jpg``/``webp``, ``txt``, ``json``, plus
``__key__`` and ``__url__``). ``ImageDecoder`` turns a stream of them into
``{"image", "caption", "key", "original_size", "crop_coords"}``, skipping (and counting) every sample
it cannot use. Random crops and flips are drawn from a generator seeded by the pass seed and the
sample's shard and key, so an augmentation does not depend on which worker decodes the sample or on
how far the stream was read before it (what makes a resumed stream exact).
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from ldm.data.quality import SampleCounter, SampleFilter

try:  # libjpeg-turbo straight into an array (a dependency; PIL decodes what it cannot)
    import simplejpeg
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    simplejpeg = None

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
"""Sample members read as the image, in order of preference."""

CROPS = ("center", "random")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert grayscale, palette, RGBA and other modes to RGB (transparency is dropped)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        # Going through RGBA avoids PIL's warning about palette transparency given as bytes.
        image = image.convert("RGBA")
    return image.convert("RGB")


def resize_and_crop(
    image: torch.Tensor, resolution: int, rng: random.Random | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize a uint8 C x H x W image's short side to ``resolution`` (antialiased bicubic), crop a square.

    The crop is centred, or uniformly placed when an ``rng`` is given; returns the crop and its
    (top, left) corner in the resized image (what SDXL-style crop conditioning uses). torchvision's
    uint8 kernels give PIL's result (within one level) at a third of PIL's cost.
    """
    height, width = image.shape[-2:]
    if (width, height) == (resolution, resolution):
        return image, (0, 0)
    scale = resolution / min(width, height)
    new_width = max(resolution, round(width * scale))
    new_height = max(resolution, round(height * scale))
    image = TF.resize(
        image, [new_height, new_width], interpolation=TF.InterpolationMode.BICUBIC, antialias=True
    )
    if rng is None:
        left, top = (new_width - resolution) // 2, (new_height - resolution) // 2
    else:
        left, top = rng.randint(0, new_width - resolution), rng.randint(0, new_height - resolution)
    return image[:, top : top + resolution, left : left + resolution], (top, left)


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 tensor 3 x H x W."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (0 -> -1, 255 -> 1), contiguous whatever the input's layout."""
    return image.to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


def model_inputs(batch: dict) -> dict:
    """A batch with its uint8 ``image`` (if any) in the models' float range [-1, 1]."""
    image = batch.get("image")
    if image is None or image.dtype != torch.uint8:
        return batch
    return {**batch, "image": to_model_range(image)}


TURBO_COLORSPACES = ("YCbCr", "Gray", "RGB")
"""JPEG colour spaces decoded with simplejpeg; CMYK and YCCK (Adobe) go through PIL's conversion."""


def dct_reduction(short_side: int, resolution: Optional[int]) -> int:
    """The largest of 1, 2, 4, 8 that keeps ``short_side / reduction >= resolution`` (1 without one).

    libjpeg-turbo also scales by 3/8, 5/8, 6/8 and 7/8, but those take longer than a full decode
    (measured: 1.9-3.1 ms against 1.5 ms for an 800 x 600 JPEG), so only powers of two are used.
    """
    reduction = 1
    while resolution is not None and reduction < 8 and -(-short_side // (2 * reduction)) >= resolution:
        reduction *= 2
    return reduction


def decode_jpeg_turbo(
    data: bytes, resolution: Optional[int] = None
) -> Optional[tuple[torch.Tensor, tuple[int, int]]]:
    """Decode a JPEG with libjpeg-turbo (simplejpeg) to a uint8 3 x H x W tensor and its original (h, w).

    With a ``resolution``, the JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose short
    side is still at least ``resolution`` (``dct_reduction``). Decoding straight into an array saves
    PIL's copy out of its image, a fifth of the time of a 256-px pipeline. Returns None when
    simplejpeg is not installed, the bytes are not a JPEG it handles (CMYK, YCCK) or it reports any
    error: the caller falls back to PIL, which decides what is broken.
    """
    if simplejpeg is None or not data.startswith(b"\xff\xd8"):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in TURBO_COLORSPACES:
            return None
        reduction = dct_reduction(min(height, width), resolution)
        pixels = simplejpeg.decode_jpeg(
            data, "RGB", min_height=-(-height // reduction), min_width=-(-width // reduction)
        )
    except ValueError:
        return None
    return torch.from_numpy(pixels).permute(2, 0, 1), (height, width)


def decode_image(data: bytes, resolution: Optional[int] = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode image bytes to a uint8 RGB tensor 3 x H x W; returns it and the original (height, width).

    With a ``resolution``, JPEGs are decoded at a reduced DCT scale whose short side stays at least
    ``resolution`` (see ``decode_jpeg_turbo`` and ``open_image``). Raises what PIL raises on bad data.
    """
    decoded = decode_jpeg_turbo(data, resolution)
    if decoded is not None:
        return decoded
    image, original_size = open_image(data, resolution)
    return pil_to_uint8(image), original_size


def open_image(data: bytes, resolution: Optional[int] = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode image bytes to an RGB PIL image; returns it and its original (height, width).

    With a ``resolution``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose short
    side is still at least ``resolution`` (PIL's draft mode): the bicubic resize that follows sees
    at least as many pixels as it outputs, and the decode is several times cheaper on large images.
    """
    with Image.open(io.BytesIO(data)) as opened:
        original_size = (opened.height, opened.width)
        if resolution is not None and opened.format == "JPEG":
            scale = resolution / min(opened.width, opened.height)
            if scale < 1:
                opened.draft("RGB", (math.ceil(opened.width * scale), math.ceil(opened.height * scale)))
        image = to_rgb(opened)
        image.load()
    return image, original_size


@dataclass
class ImageDecoder:
    """Decodes raw image-text samples for training or validation (see ``decode_stream``)."""

    resolution: int
    caption_key: str = "txt"
    crop: str = "center"
    """center, or random (applied only when the stream augments: training)."""
    flip: bool = False
    """Random horizontal flips (only when the stream augments)."""
    sample_filter: Optional[SampleFilter] = None
    jpeg_draft: bool = True
    """Decode JPEGs at a reduced DCT scale when the target is at most half the short side."""
    uint8: bool = False
    """Yield uint8 pixels (a quarter of the bytes to collate and move; ``model_inputs`` converts)."""

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop '{self.crop}'; available: {', '.join(CROPS)}")
        if self.resolution < 1:
            raise ValueError(f"resolution must be positive, got {self.resolution}")

    @property
    def augments(self) -> bool:
        """Whether training-time augmentation draws random numbers."""
        return self.crop == "random" or self.flip

    def __call__(
        self, samples: Iterator[dict], *, counter: SampleCounter, augment_seed: Optional[str] = None
    ) -> Iterator[dict]:
        return decode_stream(
            samples,
            counter=counter,
            resolution=self.resolution,
            caption_key=self.caption_key,
            augment_seed=augment_seed if self.augments else None,
            random_crop=self.crop == "random",
            flip=self.flip,
            sample_filter=self.sample_filter,
            jpeg_draft=self.jpeg_draft,
            uint8=self.uint8,
        )


def read_caption(sample: dict, caption_key: str, counter: SampleCounter, where: str) -> Optional[str]:
    """The sample's caption as text, or None (counted as skipped) when it is missing or not UTF-8."""
    if caption_key not in sample:
        counter.skip("missing_caption", f"{where} has no '{caption_key}' member")
        return None
    try:
        return sample[caption_key].decode("utf-8").strip()
    except UnicodeDecodeError:
        counter.skip("bad_text", f"{where}: caption is not UTF-8")
        return None


def decode_stream(
    samples: Iterator[dict],
    *,
    counter: SampleCounter,
    resolution: int,
    caption_key: str = "txt",
    augment_seed: Optional[str] = None,
    random_crop: bool = False,
    flip: bool = False,
    sample_filter: SampleFilter | None = None,
    jpeg_draft: bool = True,
    uint8: bool = False,
) -> Iterator[dict]:
    """Decode raw samples, skipping (and counting in ``counter``) every one that cannot be used.

    Yields ``{"image", "caption", "key", "original_size" [h, w], "crop_coords" [top, left]}``, the
    image 3 x H x W in [-1, 1] (float32), or in 0..255 (uint8) when ``uint8``.
    With an ``augment_seed`` (training), crops are placed at random when ``random_crop`` and images
    flipped with probability 1/2 when ``flip``, from a generator seeded by the seed, shard and key.
    The generator pulls one raw sample per decoded one (the stream's position depends on it).
    """
    for sample in samples:
        where = f"sample '{sample.get('__key__')}' in {sample.get('__url__')}"
        extension = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if extension is None:
            counter.skip("missing_image", f"{where} has no {'/'.join(IMAGE_EXTENSIONS)} member")
            continue
        caption = read_caption(sample, caption_key, counter, where)
        if caption is None:
            continue
        if sample_filter is not None:
            meta: dict = {}
            if sample_filter.needs_metadata:
                try:
                    meta = json.loads(sample["json"])
                except (KeyError, ValueError) as e:
                    counter.skip("bad_metadata", f"{where}: no readable json metadata ({type(e).__name__})")
                    continue
            if not sample_filter.keep(meta, caption):
                counter.skip("filtered", where)
                continue
        try:
            pixels, original_size = decode_image(sample[extension], resolution if jpeg_draft else None)
        except Exception as e:  # PIL raises many kinds for broken files
            counter.skip("unreadable_image", f"{where}: {type(e).__name__}: {e}")
            continue
        rng = None
        if augment_seed is not None:
            rng = random.Random(f"{augment_seed}-{sample.get('__url__')}-{sample['__key__']}")
        pixels, crop_coords = resize_and_crop(pixels, resolution, rng if random_crop else None)
        if flip and rng is not None and rng.random() < 0.5:
            pixels = pixels.flip(-1)
        counter.read()
        yield {
            "image": pixels if uint8 else to_model_range(pixels),
            "caption": caption,
            "key": sample["__key__"],
            "original_size": torch.tensor(original_size),
            "crop_coords": torch.tensor(crop_coords),
        }
