"""Tests for ldm/acceleration.py: compiled and channels-last networks compute what eager ones do.

The reference is the same network run eagerly in contiguous memory; the switches may only change
the order of float32 sums, so values and gradients must agree to float32 rounding.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from ldm import acceleration
from ldm.acceleration import CudaGraphed, accelerate_, channels_last_, compile_frozen
from ldm.denoiser import UNetModel
from tests.conftest import assert_float32_close as close
from tests.conftest import random_tiny_unet


def inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 700]), torch.randn(2, 5, 16, generator=g)


def training_step(unet: UNetModel) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The output and loss of one denoising step against a fixed target, and every parameter's gradient."""
    x, t, context = inputs()
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    unet.zero_grad()
    out = unet(x, t, context)
    loss = F.mse_loss(out, target)
    loss.backward()
    return out.detach(), loss.detach(), {name: p.grad.clone() for name, p in unet.named_parameters()}


def assert_same_step(switched: UNetModel, eager: UNetModel) -> torch.Tensor:
    """One training step of each agrees: output, loss and gradients; returns the switched one's output."""
    out, loss, grads = training_step(switched)
    out_ref, loss_ref, grads_ref = training_step(eager)
    close(out, out_ref)
    assert abs(loss.item() - loss_ref.item()) <= 1e-5 * loss_ref.item()
    assert grads.keys() == grads_ref.keys()
    scale = max(g.abs().max().item() for g in grads_ref.values())  # some are zero up to rounding
    for name, grad in grads.items():
        close(grad, grads_ref[name], scale)
    return out


def test_channels_last_unet_agrees_with_eager_output_loss_and_gradients():
    eager = random_tiny_unet()
    switched = channels_last_(copy.deepcopy(eager))
    assert switched.state_dict().keys() == eager.state_dict().keys()
    conv = switched.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    out = assert_same_step(switched, eager)
    assert out.is_contiguous(memory_format=torch.channels_last)  # the activations stayed channels-last


@pytest.mark.slow
def test_compiled_unet_agrees_with_eager_and_keeps_its_keys():
    """Compiling the forward and backward graphs of this U-Net takes about a minute here."""
    eager = random_tiny_unet()
    compiled = accelerate_(copy.deepcopy(eager), compile=True)
    assert type(compiled) is UNetModel
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no _orig_mod. prefix
    assert_same_step(compiled, eager)
    # The weights stay trainable inputs of the compiled graph: after an optimizer step both agree.
    for model in (compiled, eager):
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert_same_step(compiled, eager)


def test_compile_frozen_agrees_and_keeps_the_weights_of_its_first_call():
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.SiLU()).eval()
    frozen = compile_frozen(conv)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        close(frozen(x), conv(x))
        conv[0].weight.add_(1.0)
        before = conv[0].weight - 1.0
        stale = F.silu(F.conv2d(x, before, conv[0].bias, padding=1))
        close(frozen(x), stale)  # frozen in: the documented behaviour, and proof that freezing is on
        assert (frozen(x) - conv(x)).abs().max() > 1


def test_channels_last_converts_forward_inputs():
    seen = []
    module = torch.nn.Conv2d(3, 4, 1)
    module.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    channels_last_(module)
    module(torch.randn(2, 3, 5, 5))
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()


def test_cuda_graph_compilation_agrees_and_returns_copies_off_cuda():
    """On the CPU Inductor's reduce-overhead mode compiles without graphs: the same values, and each
    call's outputs are copies (on CUDA they would otherwise live in memory the next replay reuses)."""
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.SiLU()).eval()
    graphed, module = compile_frozen(conv, cuda_graphs=True), CudaGraphed(conv)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        for run in (graphed, module):
            first = run(x)
            kept = first.clone()
            second = run(x + 1)
            close(first, conv(x))
            close(second, conv(x + 1))
            assert torch.equal(first, kept) and first.data_ptr() != second.data_ptr()


def test_copied_outputs_are_new_tensors_in_the_same_structure():
    a, b = torch.ones(2), torch.zeros(3)
    out = acceleration._copied((a, [b, "text"], 4))
    assert isinstance(out, tuple) and isinstance(out[1], list) and out[1][1] == "text" and out[2] == 4
    assert torch.equal(out[0], a) and out[0].data_ptr() != a.data_ptr()
    assert torch.equal(out[1][0], b) and out[1][0].data_ptr() != b.data_ptr()
