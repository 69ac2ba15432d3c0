"""Tests for ldm/normalization.py: SiLU(norm(x)), in place only where no gradient is recorded."""

import torch
import torch.nn.functional as F

from ldm.normalization import norm_silu


def test_in_place_without_autograd_and_the_same_values():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(2, 4)
    x = torch.randn(2, 4, 3, 3)
    outputs = []
    norm.register_forward_hook(lambda m, args, out: outputs.append(out))
    with torch.no_grad():
        out = norm_silu(norm, x)
        assert out.data_ptr() == outputs[0].data_ptr()  # the norm's own buffer, overwritten
        assert torch.equal(out, F.silu(F.group_norm(x, 2, norm.weight, norm.bias)))


def test_with_autograd_a_new_tensor_and_the_reference_gradients():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(2, 4)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = norm_silu(norm, x)
    expected = F.silu(F.group_norm(x, 2, norm.weight, norm.bias))
    assert torch.equal(out, expected)
    upstream = torch.randn(out.shape)
    ours = torch.autograd.grad(out, [x, norm.weight], upstream)
    reference = torch.autograd.grad(expected, [x, norm.weight], upstream)
    for a, b in zip(ours, reference):
        assert torch.equal(a, b)
