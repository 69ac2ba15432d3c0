"""Tiny random feature extractors saved to local files, and the closed forms that FID, KID and CLIP score
must agree with: numpy's Fréchet distance and polynomial-kernel MMD, and 100 * cos of open_clip's own
embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file
from torch import nn

from ldm.weights.io import load_checked, read_tensors


class TinyFeatures(nn.Module):
    """uint8 images -> 6 features: a strided convolution, ReLU and a global mean (random weights)."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, kernel_size=4, stride=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(images.float() / 255 - 0.5)).mean(dim=(2, 3))


def save_tiny_features(path: Path) -> Path:
    """A seeded random TinyFeatures saved as safetensors."""
    torch.manual_seed(0)
    save_file(TinyFeatures().state_dict(), str(path))
    return path


def load_tiny_features(path: str | Path) -> TinyFeatures:
    """TinyFeatures from a local file, through the project's weights reader and key-and-shape check."""
    extractor = TinyFeatures()
    load_checked(extractor, read_tensors(path), f"{path} does not fit TinyFeatures")
    return extractor


def random_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """n random uint8 images [n, 3, size, size]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)


def frechet_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), by symmetric eigendecompositions."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    mean_term = ((a.mean(0) - b.mean(0)) ** 2).sum()
    return float(mean_term + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def kid_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 of two sets of m features under the cubic kernel (x.y / d + 1)^3."""
    m, d = a.shape

    def kernel(x, y):
        return (x @ y.T / d + 1) ** 3

    k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within - 2 * k_ab.sum() / m**2)


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
"""An open_clip model config: 32 px images, 16-token captions, 16-d embeddings."""


def tiny_clip() -> nn.Module:
    """A seeded random open_clip CLIP of TINY_CLIP, built directly (not through open_clip's registry)."""
    torch.manual_seed(0)
    return open_clip.CLIP(**TINY_CLIP).eval()


def cosines(model: nn.Module, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """cos(E_image, E_caption) per pair, for uint8 32 px images normalised here by OpenAI's mean and std."""
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=16)(captions)
    with torch.no_grad():
        image_embeddings = model.encode_image((images.float() / 255 - mean) / std)
        text_embeddings = model.encode_text(tokens)
    return torch.nn.functional.cosine_similarity(image_embeddings, text_embeddings, dim=-1)


def save_tiny_clip(folder: Path, images: torch.Tensor, captions: list[str]) -> tuple[Path, Path, float]:
    """tiny_clip's config and weights saved in `folder`; returns (config, weights, expected CLIP score).

    Should the mean cosine of `images` and `captions` be negative (CLIP score clips it to 0), the text
    projection is negated before saving, which negates every cosine: the expected score is > 0.
    """
    model = tiny_clip()
    if cosines(model, images, captions).mean() < 0:
        model.text_projection.data.neg_()
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    weights = folder / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return config, weights, float(100 * cosines(model, images, captions).mean())
