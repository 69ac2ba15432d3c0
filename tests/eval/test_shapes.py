"""Tests of the analytic colour and shape classifier of generated samples (ldm/eval/shapes.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from ldm.data.shapes import COLORS, SHAPES, generate_shapes
from ldm.eval.shapes import (
    SHAPE_PROMPTS,
    classify_color,
    classify_shape,
    largest_component,
    score_images,
)


def rendered(num: int, resolution: int, seed: int = 11) -> tuple[list[Image.Image], list[str], list[str]]:
    samples = list(generate_shapes(num, resolution=resolution, seed=seed, split="val"))
    return (
        [s.image for s in samples],
        [s.metadata["color"] for s in samples],
        [s.metadata["shape"] for s in samples],
    )


def degrade(image: Image.Image, blur: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (radius in pixels) and Gaussian noise (std as a fraction of full scale), as uint8."""
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(blur))).astype(np.float64)
    pixels += rng.normal(0.0, noise * 255, pixels.shape)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def test_prompts_cover_every_color_and_shape():
    assert len(SHAPE_PROMPTS) == 18
    assert SHAPE_PROMPTS[0] == ("a red circle", "red", "circle")
    assert {(c, s) for _, c, s in SHAPE_PROMPTS} == {(c, s) for c in COLORS for s in SHAPES}
    assert all(prompt == f"a {c} {s}" for prompt, c, s in SHAPE_PROMPTS)


@pytest.mark.parametrize(("resolution", "num"), [(32, 300), (64, 200)])
def test_rendered_shapes_are_classified_correctly(resolution, num):
    images, colors, shapes = rendered(num, resolution)
    score = score_images(images, colors, shapes)
    assert score.n == num
    # Measured: every colour and every shape right at both resolutions.
    assert score.color_accuracy == 1.0
    assert score.shape_accuracy == 1.0
    assert len(score.per_prompt) == 18  # all colours and shapes were exercised
    assert sum(entry["n"] for entry in score.per_prompt.values()) == num
    # The single-image functions agree, on PIL images and on uint8 arrays alike.
    for image, color, shape in list(zip(images, colors, shapes, strict=True))[:40]:
        assert classify_color(image) == classify_color(np.asarray(image)) == color
        assert classify_shape(image) == classify_shape(np.asarray(image)) == shape


@pytest.mark.parametrize("resolution", [32, 64])
def test_classifier_tolerates_mild_blur_and_noise(resolution):
    images, colors, shapes = rendered(300, resolution, seed=12)
    rng = np.random.default_rng(0)
    # Blur of 0.5 px and noise of 3% at 32 px, scaled with the resolution, like a slightly soft decoder.
    blurred = [degrade(image, 0.5 * resolution / 32, 0.03, rng) for image in images]
    score = score_images(blurred, colors, shapes)
    assert score.color_accuracy == 1.0
    assert score.shape_accuracy >= 0.99  # measured: 1.0 on these images (0.999 over 1000 at 32 px)


def test_classifier_ignores_a_stray_blob():
    image = next(generate_shapes(1, resolution=64, seed=1, split="val")).image
    color, shape = classify_color(image), classify_shape(image)
    pixels = np.asarray(image).copy()
    # A small blob of another colour in a free corner must not change either answer.
    corner = (slice(0, 3), slice(0, 3)) if pixels[:3, :3].max() == 0 else (slice(-3, None), slice(-3, None))
    other = next(c for c in COLORS if c != color)
    pixels[corner] = COLORS[other]
    assert classify_color(pixels) == color
    assert classify_shape(pixels) == shape


def test_largest_component_picks_the_bigger_region():
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:4, 1:4] = True  # 9 pixels
    mask[5:9, 6:11] = True  # 20 pixels
    mask[0, 11] = True  # touches the big region only diagonally: separate
    mask[4, 8] = True  # joins the big region (4-connected)
    largest = largest_component(mask)
    assert largest.sum() == 21
    assert largest[4, 8] and largest[5:9, 6:11].all() and not largest[1:4, 1:4].any() and not largest[0, 11]


def test_nothing_to_classify_gives_none():
    black = np.zeros((32, 32, 3), dtype=np.uint8)
    assert classify_color(black) is None and classify_shape(black) is None
    dim = np.full((32, 32, 3), 100, dtype=np.uint8)  # below half brightness everywhere
    assert classify_shape(dim) is None
    speck = black.copy()
    speck[10:14, 10:14] = (255, 0, 0)  # 16 pixels = 1.6% of the image, under the 2% floor
    assert classify_color(speck) is None and classify_shape(speck) is None
    score = score_images([black, speck], ["red", "red"], ["square", "square"])
    assert score.color_accuracy == 0.0 and score.shape_accuracy == 0.0


def test_dim_and_slightly_off_hues_still_match():
    square = np.zeros((32, 32, 3), dtype=np.uint8)
    square[8:24, 8:24] = (200, 170, 30)  # a dull yellow
    assert classify_color(square) == "yellow"
    square[8:24, 8:24] = (30, 140, 190)  # a dull cyan-ish blue, nearer cyan than blue
    assert classify_color(square) == "cyan"
    square[8:24, 8:24] = (40, 20, 230)
    assert classify_color(square) == "blue"
    assert classify_shape(square) == "square"


def test_wrong_labels_lower_the_score_by_the_exact_amount():
    images, colors, shapes = rendered(36, 32, seed=13)
    correct = score_images(images, colors, shapes)
    assert correct.color_accuracy == 1.0 and correct.shape_accuracy == 1.0
    wrong_colors = list(colors)
    for i in (0, 5, 9):
        wrong_colors[i] = next(c for c in COLORS if c != colors[i])
    wrong_shapes = list(shapes)
    wrong_shapes[2] = next(s for s in SHAPES if s != shapes[2])
    score = score_images(images, wrong_colors, wrong_shapes)
    assert score.color_accuracy == 33 / 36
    assert score.shape_accuracy == 35 / 36
    # Per prompt: images are tallied under the prompt they were labelled with; since the classifier
    # is right on every image, a label is a hit exactly when it is the true one.
    expected: dict[str, list[int]] = {}
    for i in range(36):
        tally = expected.setdefault(f"a {wrong_colors[i]} {wrong_shapes[i]}", [0, 0, 0])
        tally[0] += 1
        tally[1] += wrong_colors[i] == colors[i]
        tally[2] += wrong_shapes[i] == shapes[i]
    assert score.per_prompt == {
        prompt: {"n": n, "color_accuracy": c / n, "shape_accuracy": s / n}
        for prompt, (n, c, s) in expected.items()
    }
    assert any(entry["color_accuracy"] < 1 for entry in score.per_prompt.values())


def test_score_to_dict_is_json():
    images, colors, shapes = rendered(6, 32)
    score = score_images(images, colors, shapes)
    data = json.loads(json.dumps(score.to_dict()))
    assert data["n"] == 6 and data["color_accuracy"] == 1.0 and data["shape_accuracy"] == 1.0
    assert set(data["per_prompt"]) == {f"a {c} {s}" for c, s in zip(colors, shapes, strict=True)}
    for entry in data["per_prompt"].values():
        assert set(entry) == {"n", "color_accuracy", "shape_accuracy"}


def test_score_rejects_bad_input():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="the counts must match"):
        score_images([image], ["red", "blue"], ["circle"])
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        score_images([image], ["purple"], ["circle"])
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        score_images([image], ["red"], ["star"])
    with pytest.raises(ValueError, match="no images"):
        score_images([], [], [])
    with pytest.raises(ValueError, match="expected an HxWx3 image"):
        classify_color(np.zeros((8, 8), dtype=np.uint8))
