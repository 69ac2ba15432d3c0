"""Tests of the analytic object detector (ldm/eval/detect.py) on images with known objects."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ldm.data.compose import place_scene, render_scene
from ldm.data.compose_grammar import parse_caption
from ldm.data.shapes import COLORS
from ldm.eval.detect import DetectedObject, detect_objects, hue_indices


def canvas(size: int = 64) -> np.ndarray:
    return np.zeros((size, size, 3), dtype=np.uint8)


def test_squares_give_exact_colour_shape_centre_and_area():
    image = canvas()
    image[10:20, 4:14] = COLORS["red"]  # 10x10 at rows 10-19, columns 4-13
    image[40:56, 30:62] = COLORS["cyan"]  # 16x32: not square, but full: a "square"
    objects = detect_objects(image)
    assert objects == [
        DetectedObject("cyan", "square", cx=46 / 64, cy=48 / 64, area=512 / 4096),
        DetectedObject("red", "square", cx=9 / 64, cy=15 / 64, area=100 / 4096),
    ]
    assert objects[1].binding == "red square"


def test_debris_is_ignored_and_touching_colours_are_split():
    image = canvas()
    image[20:36, 10:26] = COLORS["green"]
    image[20:36, 26:42] = COLORS["magenta"]  # touches the green square along a whole side
    image[60:64, 60:64] = COLORS["blue"]  # 16 pixels: 0.4% of the image, debris
    image[2, 2] = (255, 255, 255)
    found = sorted((o.color, o.shape, o.cx, o.cy) for o in detect_objects(image))
    assert found == [("green", "square", 18 / 64, 28 / 64), ("magenta", "square", 34 / 64, 28 / 64)]


def test_rendered_scenes_are_detected_exactly():
    rng = np.random.default_rng(0)
    for caption in ("a small red triangle to the left of a large blue circle", "three small green squares",
                    "a large yellow circle and a small magenta triangle"):  # fmt: skip
        for resolution in (32, 64):
            scene = place_scene(parse_caption(caption), rng, resolution)
            objects = detect_objects(render_scene(scene))
            expected = sorted((o.color, o.shape) for o in scene.objects)
            assert sorted((o.color, o.shape) for o in objects) == expected
            for index, item in enumerate(scene.objects):
                cx, cy = scene.centre(index)
                # The detected box centre is within a pixel of the drawn one.
                match = min(objects, key=lambda o, cx=cx, cy=cy: abs(o.cx - cx) + abs(o.cy - cy))
                assert (match.color, match.shape) == (item.color, item.shape)
                assert abs(match.cx - cx) <= 1 / resolution and abs(match.cy - cy) <= 1 / resolution


def test_noise_has_no_objects():
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert detect_objects(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) == []
    assert detect_objects(canvas()) == []


def test_hues_of_dim_and_anti_aliased_pixels():
    pixels = np.array([[[1.0, 0, 0], [0.3, 0.3, 0], [0.2, 0.0, 0.21], [0.1, 0.5, 0.45]]])
    assert [list(COLORS)[i] for i in hue_indices(pixels)[0]] == ["red", "yellow", "magenta", "cyan"]
    with pytest.raises(ValueError, match="expected uint8 pixels"):
        detect_objects(np.zeros((8, 8, 3), dtype=np.float32))
    assert detect_objects(Image.new("RGB", (32, 32))) == []
