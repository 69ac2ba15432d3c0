"""Tests for ldm/denoiser/conv.py: the GEMM path of the U-Net's convolution against F.conv2d."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldm.denoiser import conv as conv_module
from ldm.denoiser.conv import GEMM_MAX_PIXELS, GEMM_MIN_WEIGHTS, Conv2d, gemm_conv2d, runs_as_gemm
from tests.conftest import assert_float32_close as close
from tests.conftest import assert_same_gradients, random_tiny_unet


@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, bias",
    [(3, 1, 1, 1, True), (3, 2, 1, 1, True), (1, 1, 0, 1, False), (3, 1, 2, 2, True), (2, 2, 0, 1, True)],
)
def test_gemm_path_equals_conv2d_values_and_gradients(kernel, stride, padding, dilation, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 20, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    x = torch.randn(3, 12, 7, 6, requires_grad=True)
    expected = F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation)
    actual = gemm_conv2d(conv, x)
    close(actual, expected)
    assert actual.is_contiguous()
    assert_same_gradients(actual, expected, [x, *conv.parameters()])


def test_gemm_path_keeps_a_channels_last_input_channels_last():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    out = gemm_conv2d(conv, x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    close(out, conv(x))


def test_which_convolutions_take_the_gemm_path(monkeypatch):
    big = Conv2d(1280, 1280, 3, padding=1)  # SD 2's deepest 3x3 conv: 14.7M weights
    small = Conv2d(640, 640, 3, padding=1)  # 3.7M weights: oneDNN is faster at any pixel count
    down = Conv2d(1280, 1280, 3, stride=2, padding=1)
    assert big.weight.numel() >= GEMM_MIN_WEIGHTS > small.weight.numel()
    assert GEMM_MAX_PIXELS == 128
    assert runs_as_gemm(big, torch.empty(4, 1280, 4, 4))  # 64 output pixels
    assert runs_as_gemm(big, torch.empty(8, 1280, 4, 4))  # 128
    assert not runs_as_gemm(big, torch.empty(4, 1280, 8, 8))  # 256
    assert not runs_as_gemm(small, torch.empty(1, 640, 2, 2))
    assert runs_as_gemm(down, torch.empty(8, 1280, 8, 8))  # stride 2: 8 x 4 x 4 output pixels
    assert not runs_as_gemm(down, torch.empty(8, 1280, 8, 8, device="meta"))  # CPU only
    monkeypatch.setattr(conv_module, "GEMM_MIN_WEIGHTS", 1)
    assert runs_as_gemm(Conv2d(8, 8, 3), torch.empty(1, 8, 3, 3))
    assert not runs_as_gemm(Conv2d(8, 8, 3, groups=2), torch.empty(1, 8, 3, 3))
    assert not runs_as_gemm(Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), torch.empty(1, 8, 3, 3))
    assert not runs_as_gemm(Conv2d(8, 8, 3, padding="same"), torch.empty(1, 8, 3, 3))


def test_conv2d_module_has_nn_conv2d_keys_and_values(monkeypatch):
    torch.manual_seed(0)
    ours = Conv2d(16, 32, 3, padding=1)
    reference = nn.Conv2d(16, 32, 3, padding=1)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, 4, 4)
    assert not runs_as_gemm(ours, x)
    torch.testing.assert_close(ours(x), reference(x), atol=0, rtol=0)  # oneDNN path: the same call
    monkeypatch.setattr(conv_module, "GEMM_MIN_WEIGHTS", 1)
    assert runs_as_gemm(ours, x)
    close(ours(x), reference(x))


def test_a_unet_on_the_gemm_path_computes_what_it_computes_on_onednn(monkeypatch):
    """Every convolution of a tiny U-Net forced onto the GEMM path: same outputs and gradients."""
    unet = random_tiny_unet()
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.randn(2, 5, 16)

    def run() -> list[torch.Tensor]:
        unet.zero_grad()
        out = unet(x, t, context)
        out.square().mean().backward()
        return [out.detach(), *(p.grad.clone() for p in unet.parameters())]

    monkeypatch.setattr(conv_module, "GEMM_MAX_PIXELS", 0)
    reference = run()
    monkeypatch.setattr(conv_module, "GEMM_MAX_PIXELS", 10**9)
    monkeypatch.setattr(conv_module, "GEMM_MIN_WEIGHTS", 1)
    calls = []
    monkeypatch.setattr(conv_module, "gemm_conv2d", lambda *a: calls.append(1) or gemm_conv2d(*a))
    gemm = run()
    assert len(calls) == sum(isinstance(m, nn.Conv2d) for m in unet.modules())
    close(gemm[0], reference[0])
    # Gradients against the largest one: some are zero up to rounding (a norm's bias before another norm).
    scale = max(g.abs().max().item() for g in reference[1:])
    for ours, expected in zip(gemm[1:], reference[1:]):
        close(ours, expected, scale)
