"""GPU-marked tests: `pytest -m gpu tests/gpu` (what scripts/gpu_check.sh runs); each skips without CUDA.

Each check is a function of the device, so that it reads the same on CUDA as on the CPU; the tests
call it with "cuda".
"""

from __future__ import annotations

import pytest
import torch

requires_cuda = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (run by scripts/gpu_check.sh)"
    ),
]
"""The ``pytestmark`` of every module here."""


@pytest.fixture
def strict_fp32():
    """float32 matrix products and convolutions without TF32 (its 10-bit mantissa), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64 (the scale of `expected` must not be 0)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    expected = expected.double().cpu()
    scale = expected.abs().max().item()
    assert scale > 0
    return (actual.double().cpu() - expected).abs().max().item() / scale


def relative_l2_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in float64."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    expected = expected.double().cpu()
    return ((actual.double().cpu() - expected).norm() / expected.norm()).item()
