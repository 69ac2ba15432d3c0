"""On CUDA, the attention backends of ldm/denoiser/attention.py compute the same softmax(q k^T / sqrt(d)) v:
sdpa (PyTorch's fused kernels) and xformers against the float32 "math" backend, which is itself checked
against a float64 computation on the CPU; then whole U-Nets that differ only in their backend.

Tolerances: float32 kernels differ from float64 by rounding alone (1e-4 of the output's scale is ~100
float32 ulps); bf16 kernels round their inputs' products and their output to 8 bits of mantissa
(2^-9 = 2e-3 relative per rounding), so 1e-2 of the scale.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch

from ldm.config import UNetConfig
from ldm.denoiser import attention as attention_module
from ldm.denoiser.attention import attention
from ldm.denoiser.unet import UNetModel
from tests.gpu.conftest import max_relative_error, relative_l2_error, requires_cuda

pytestmark = requires_cuda

SHAPES = {
    "sd2-64x64-self": (2, 5, 4096, 64, 4096),  # (batch, heads, queries, head_dim, keys): SD 2's first level
    "sd1-cross": (2, 8, 1024, 40, 77),  # SD 1's 320 channels / 8 heads, 77 text tokens
    "odd": (3, 2, 333, 24, 45),  # lengths that no kernel tiles evenly
}
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def qkv(shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int = 0) -> list[torch.Tensor]:
    """Random q, k, v of `shape` = (batch, heads, queries, head_dim, keys) in `dtype` on `device`."""
    b, h, n, d, m = shape
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(b, h, length, d, generator=g) for length in (n, m, m)]
    return [t.to(device, dtype) for t in tensors]


def skip_without_xformers(backend: str) -> None:
    if backend == "xformers" and attention_module._import_xformers_ops() is None:
        pytest.skip("xformers is not installed")


def check_math_backend_is_the_closed_form(device: str) -> None:
    """The float32 math backend on `device` against softmax(q k^T / sqrt(d)) v in float64 on the CPU."""
    q, k, v = qkv(SHAPES["sd1-cross"], torch.float32, device)
    q64, k64, v64 = (t.double().cpu() for t in (q, k, v))
    weights = torch.softmax(q64 @ k64.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    assert max_relative_error(attention(q, k, v, "math"), weights @ v64) <= 1e-5


def check_backend_matches_math(backend: str, dtype: torch.dtype, shape: tuple[int, ...], device: str) -> None:
    """`backend` on `dtype` inputs against the float32 math backend on the same (rounded) inputs."""
    q, k, v = qkv(shape, dtype, device)
    out = attention(q, k, v, backend)
    assert out.dtype == dtype and out.shape == q.shape
    reference = attention(q.float(), k.float(), v.float(), "math")
    assert max_relative_error(out, reference) <= TOLERANCE[dtype]


def check_gradients_match_math(backend: str, device: str) -> None:
    """d(sum(out * w))/d(q, k, v) of `backend` against the math backend's, float32."""
    inputs = qkv(SHAPES["odd"], torch.float32, device)
    weights = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1)).to(device)
    gradients = {}
    for name in (backend, "math"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        (attention(*leaves, name) * weights).sum().backward()
        gradients[name] = [t.grad for t in leaves]
    for actual, expected in zip(gradients[backend], gradients["math"]):
        assert max_relative_error(actual, expected) <= 1e-4


def unet_outputs(backends: list[str], dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """One U-Net's weights under each backend: its output on the same inputs (autocast for bf16)."""
    config = UNetConfig(
        model_channels=64, channel_mult=[1, 2], attention_resolutions=[1, 2], num_head_channels=32,
        context_dim=64,
    )  # fmt: skip
    torch.manual_seed(0)
    state = UNetModel.from_config(config).state_dict()
    g = torch.Generator().manual_seed(2)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}  # no zero layers
    x = torch.randn(2, 4, 32, 32, generator=g).to(device)
    context = torch.randn(2, 77, 64, generator=g).to(device)
    timesteps = torch.tensor([10, 900], device=device)
    outputs = {}
    for backend in backends:
        unet = UNetModel.from_config(dataclasses.replace(config, attention_backend=backend))
        unet.load_state_dict(state)
        unet.to(device).eval()
        with torch.no_grad(), torch.autocast(device, dtype, enabled=dtype != torch.float32):
            outputs[backend] = unet(x, timesteps, context).float()
    return outputs


def test_math_backend_is_the_closed_form_on_cuda(strict_fp32):
    check_math_backend_is_the_closed_form("cuda")


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["sdpa", "xformers"])
def test_backend_matches_math_on_cuda(backend, dtype, shape, strict_fp32, caplog):
    skip_without_xformers(backend)
    with caplog.at_level(logging.WARNING, logger="ldm.denoiser.attention"):
        check_backend_matches_math(backend, dtype, shape, "cuda")
    assert "falling back" not in caplog.text  # xformers itself ran, not sdpa in its place


@pytest.mark.parametrize("backend", ["sdpa", "xformers"])
def test_backend_gradients_match_math_on_cuda(backend, strict_fp32):
    skip_without_xformers(backend)
    check_gradients_match_math(backend, "cuda")


def test_unets_differing_only_in_backend_agree_on_cuda(strict_fp32):
    backends = ["math", "sdpa"] + ([] if attention_module._import_xformers_ops() is None else ["xformers"])
    reference = unet_outputs(["math"], torch.float32, "cuda")["math"]
    fp32 = unet_outputs(backends, torch.float32, "cuda")
    for backend in backends:
        assert relative_l2_error(fp32[backend], reference) <= 1e-4, backend
    # In bf16 the whole network rounds (1.6e-2 from float32 on the CPU, where sdpa added 0.06% to it):
    # no backend may add more than a quarter to the error of the exact (math) attention.
    bf16 = {
        k: relative_l2_error(v, reference) for k, v in unet_outputs(backends, torch.bfloat16, "cuda").items()
    }
    assert bf16["math"] <= 5e-2, bf16
    assert all(error <= 1.25 * bf16["math"] for error in bf16.values()), bf16
