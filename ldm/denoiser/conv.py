"""The U-Net's 2-D convolution: on the CPU, a convolution with a large weight and few output pixels
runs as one matrix product over unfolded patches (im2col + GEMM) instead of oneDNN's kernel.

oneDNN, PyTorch's CPU convolution, copies the weight into its blocked layout on every call. For a
weight of tens of megabytes and a handful of output pixels that copy costs more than the
arithmetic: SD 2's 1280-channel 3x3 convolutions (14.7M weights, 59 MB) at the 2x2 and 4x4 levels
of 16x16 or 32x32 latents. A GEMM reads the weight once in its stored (out, in * kh * kw) layout.
Measured on a 2-core AVX-512 EPYC, one thread (forward, then forward + backward; oneDNN's time
over the GEMM's): 1280 -> 1280 at 16 output pixels 4.3x / 2.9x, at 64 pixels 1.8x / 2.0x, at 128
pixels 1.3x / 1.4x, at 256 pixels 0.8x / 0.9x; a 640 -> 640 weight (3.7M) is faster in oneDNN from
about 32 pixels on. Hence the two thresholds below. The parameters and the state dict are
``nn.Conv2d``'s; the result equals ``F.conv2d``'s to float32 rounding (the sums run in another order).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ldm.acceleration import any_channels_last

GEMM_MAX_PIXELS = 128
"""Output pixels (batch x height x width) up to which a CPU convolution may run as a GEMM."""
GEMM_MIN_WEIGHTS = 2**23
"""Weight elements (out x in x kh x kw, 8.4M: 32 MB in float32) from which it does."""


def runs_as_gemm(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether ``conv`` applied to ``x`` takes the GEMM path: CPU, plain zero-padded convolution, a
    weight of at least GEMM_MIN_WEIGHTS elements and at most GEMM_MAX_PIXELS output pixels."""
    if x.device.type != "cpu" or conv.groups != 1 or conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str) or conv.weight.numel() < GEMM_MIN_WEIGHTS or x.ndim != 4:
        return False
    h, w = _output_size(conv, x)
    return x.shape[0] * h * w <= GEMM_MAX_PIXELS


def _output_size(conv: nn.Conv2d, x: Tensor) -> tuple[int, int]:
    sizes = []
    for i in range(2):
        span = conv.dilation[i] * (conv.kernel_size[i] - 1) + 1
        sizes.append((x.shape[2 + i] + 2 * conv.padding[i] - span) // conv.stride[i] + 1)
    return sizes[0], sizes[1]


def gemm_conv2d(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` as im2col + one GEMM: (b, c, h, w) -> (b, out, h', w'), in F.conv2d's memory format."""
    b = x.shape[0]
    h, w = _output_size(conv, x)
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (b, c kh kw, h' w')
    cols = cols.transpose(1, 2).reshape(b * h * w, -1)  # one row of patch values per output pixel
    weight = conv.weight.reshape(conv.out_channels, -1)  # (out, c kh kw): unfold's order of patch values
    out = F.linear(cols, weight, conv.bias)  # (b h' w', out)
    out = out.view(b, h, w, -1).permute(0, 3, 1, 2)  # (b, out, h', w') in channels-last memory
    return out if any_channels_last(x, conv.weight) else out.contiguous()


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and keys) that takes the GEMM path where :func:`runs_as_gemm`."""

    def forward(self, x: Tensor) -> Tensor:
        """(b, in, h, w) -> (b, out, h', w')."""
        if runs_as_gemm(self, x):
            return gemm_conv2d(self, x)
        return super().forward(x)
