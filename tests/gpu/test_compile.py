"""On CUDA, ``torch.compile`` of the U-Net (ldm/denoiser/unet.py) computes what the eager U-Net computes:
the forward in float32 and under bf16 autocast, and the float32 gradients of a training loss.

Inductor fuses and reorders reductions (GroupNorm, softmax, the sums of matrix products), so float32
agrees to rounding, not bit for bit: 1e-4 of the output's scale. Under bf16 both round the network's
activations, compiled code in other places than eager: its error from the float32 output may be at most
a quarter above eager's own.
"""

from __future__ import annotations

import pytest
import torch

from ldm.acceleration import compile_frozen
from ldm.config import UNetConfig
from ldm.denoiser.unet import UNetModel
from tests.gpu.conftest import max_relative_error, relative_l2_error, requires_cuda

pytestmark = requires_cuda

CONFIG = UNetConfig(
    model_channels=64,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[2],
    num_head_channels=32,
    context_dim=64,
)
"""Two levels, a transformer at the second and in the middle block: every kind of block, compiled quickly."""


def unet_and_inputs(device: str) -> tuple[UNetModel, tuple[torch.Tensor, ...]]:
    """The U-Net of CONFIG with every weight random (none zero) and a batch of its inputs, on `device`."""
    torch.manual_seed(0)
    unet = UNetModel.from_config(CONFIG)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    x = torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 77, CONFIG.context_dim, generator=g)
    return unet.to(device), (x.to(device), torch.tensor([3, 700], device=device), context.to(device))


def forward(unet: torch.nn.Module, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
    """The U-Net's output in float32, computed under autocast to `dtype` unless that is float32."""
    device = inputs[0].device.type
    with torch.no_grad(), torch.autocast(device, dtype, enabled=dtype != torch.float32):
        return unet(*inputs).float()


def check_compiled_forward_matches_eager(device: str) -> None:
    unet, inputs = unet_and_inputs(device)
    unet.eval()
    compiled = torch.compile(unet)
    reference = forward(unet, inputs, torch.float32)
    assert max_relative_error(forward(compiled, inputs, torch.float32), reference) <= 1e-4
    eager_bf16 = relative_l2_error(forward(unet, inputs, torch.bfloat16), reference)
    compiled_bf16 = relative_l2_error(forward(compiled, inputs, torch.bfloat16), reference)
    assert 0 < eager_bf16 <= 5e-2 and compiled_bf16 <= 1.25 * eager_bf16, (eager_bf16, compiled_bf16)


def check_compiled_gradients_match_eager(device: str) -> None:
    """Gradients of sum(out * w) with respect to every parameter, compiled against eager, float32."""
    gradients = []
    for compile_ in (False, True):
        unet, inputs = unet_and_inputs(device)
        unet.train()
        model = torch.compile(unet) if compile_ else unet
        out = model(*inputs)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device)
        (out * weights).sum().backward()
        gradients.append({name: p.grad for name, p in unet.named_parameters()})
    eager, compiled = gradients
    assert eager.keys() == compiled.keys()
    for name in eager:
        assert max_relative_error(compiled[name], eager[name]) <= 1e-4, name


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Compiled code of one test is not reused by the next."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_unet_forward_matches_eager_on_cuda(strict_fp32):
    check_compiled_forward_matches_eager("cuda")


def test_compiled_unet_gradients_match_eager_on_cuda(strict_fp32):
    check_compiled_gradients_match_eager("cuda")


def test_cuda_graph_replays_match_eager_and_keep_earlier_outputs(strict_fp32):
    """``compile_frozen(cuda_graphs=True)`` (``--cuda-graphs``): replayed graphs compute the eager U-Net's
    output, and an output kept from one call (as DPM++ keeps the last step's) survives the next replays."""
    unet, (x, t, context) = unet_and_inputs("cuda")
    unet.eval()
    graphed = compile_frozen(unet, cuda_graphs=True)
    with torch.no_grad():
        first = graphed(x, t, context)
        kept = first.clone()
        later = [graphed(x + k, t, context) for k in (1, 2, 3)]
        assert torch.equal(first, kept)
        assert max_relative_error(first, unet(x, t, context)) <= 1e-4
        assert max_relative_error(later[-1], unet(x + 3, t, context)) <= 1e-4
