"""Tests for ldm/upsampling.py: phase convolutions against nearest-neighbour 2x upsampling + 3x3 conv."""

import pytest
import torch
from torch import nn

from ldm import upsampling
from ldm.upsampling import (
    PHASE_MIN_PIXELS,
    phase_kernels,
    phase_upsample_conv,
    runs_as_phases,
    upsample_conv,
    upsample_conv_reference,
)
from tests.conftest import assert_float32_close as close
from tests.conftest import assert_same_gradients


def test_phase_kernels_closed_form():
    # Taps 1..9 row by row; phase (0, 0) adds rows 1 and 2 and columns 1 and 2: [[1, 2+3], [4+7, 5+6+8+9]].
    w = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    k = phase_kernels(w)[:, 0]
    expected = torch.tensor(
        [
            [[1, 5], [11, 28]],  # (p, q) = (0, 0)
            [[3, 3], [24, 15]],  # (0, 1): columns [w0 + w1, w2]
            [[5, 16], [7, 17]],  # (1, 0): rows [w0 + w1, w2]
            [[12, 9], [15, 9]],  # (1, 1)
        ]
    )
    torch.testing.assert_close(k, expected.float(), atol=0, rtol=0)


@pytest.mark.parametrize("shape, bias", [((2, 5, 4, 4), True), ((1, 3, 5, 7), False), ((3, 4, 1, 2), True)])
def test_phase_path_equals_upsample_then_conv_values_and_gradients(shape, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], 6, 3, padding=1, bias=bias)
    x = torch.randn(shape, requires_grad=True)
    expected = upsample_conv_reference(conv, x)
    actual = phase_upsample_conv(conv, x)
    assert actual.is_contiguous()
    close(actual, expected)
    assert_same_gradients(actual, expected, [x, *conv.parameters()])


def test_phase_path_keeps_channels_last():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 3, 5).contiguous(memory_format=torch.channels_last)
    out = phase_upsample_conv(conv, x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    close(out, upsample_conv_reference(conv, x))


def test_which_upsamplings_take_the_phase_path(monkeypatch):
    conv = nn.Conv2d(8, 8, 3, padding=1)
    assert PHASE_MIN_PIXELS == 4096
    assert runs_as_phases(conv, torch.empty(1, 8, 32, 32))  # 64 x 64 output pixels
    assert not runs_as_phases(conv, torch.empty(1, 8, 16, 32))  # 2048
    assert runs_as_phases(conv, torch.empty(4, 8, 16, 16))
    assert not runs_as_phases(conv, torch.empty(1, 8, 32, 32, device="meta"))  # CPU only
    for other in (
        nn.Conv2d(8, 8, 1),
        nn.Conv2d(8, 8, 3, 2, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
    ):
        assert not runs_as_phases(other, torch.empty(1, 8, 32, 32))
    calls = []
    monkeypatch.setattr(upsampling, "phase_upsample_conv", lambda *a: calls.append(1))
    upsample_conv(conv, torch.randn(1, 8, 32, 32))
    assert upsample_conv(conv, torch.randn(1, 8, 2, 2)).shape == (1, 8, 4, 4)
    assert calls == [1]
