import math

import pytest
import torch

from ldm.optim import adam, adamw, fused_supported


def test_fused_needs_floating_parameters_on_a_fused_device():
    assert fused_supported([torch.zeros(3), torch.zeros(2, dtype=torch.bfloat16)])
    assert not fused_supported([torch.zeros(3), torch.zeros(3, dtype=torch.int64)])
    assert not fused_supported([torch.zeros(3, device="meta")])
    assert not fused_supported([])
    assert not adamw([torch.nn.Parameter(torch.zeros(3, device="meta"))], lr=1e-3).defaults["fused"]


def test_first_adamw_step_is_the_closed_form():
    # Step 1 with bias correction: m_hat = g, v_hat = g^2, so
    # p <- p * (1 - lr * wd) - lr * g / (|g| + eps)   (Loshchilov & Hutter 2019, Algorithm 2).
    lr, wd, eps = 0.1, 0.01, 1e-8
    p0 = torch.tensor([1.0, -2.0, 0.5, 3.0])
    g = torch.tensor([0.3, -1e-3, 2.0, -4.0])
    p = torch.nn.Parameter(p0.clone())
    optimizer = adamw([p], lr=lr, weight_decay=wd, eps=eps)
    assert optimizer.defaults["fused"]
    p.grad = g.clone()
    optimizer.step()
    expected = p0 * (1 - lr * wd) - lr * g / (g.abs() + eps)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("build, reference", [(adamw, torch.optim.AdamW), (adam, torch.optim.Adam)])
def test_fused_steps_match_the_reference_loop(build, reference):
    torch.manual_seed(0)
    shapes = [(16, 8), (8,), (4, 4, 3, 3)]
    fused = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    looped = [torch.nn.Parameter(p.detach().clone()) for p in fused]
    initial = [p.detach().clone() for p in fused]
    groups = [{"params": fused[:2]}, {"params": fused[2:], "lr": 3e-3}]
    kwargs = {"lr": 1e-2, "betas": (0.5, 0.9), "weight_decay": 0.05}
    optimizer = build(groups, **kwargs)
    baseline = reference(
        [{"params": looped[:2]}, {"params": looped[2:], "lr": 3e-3}], foreach=False, fused=False, **kwargs
    )
    assert optimizer.defaults["fused"] and not baseline.defaults["fused"]
    for step in range(20):
        gradients = [torch.randn(s) * math.exp(-step / 10) for s in shapes]
        for params, opt in ((fused, optimizer), (looped, baseline)):
            for p, g in zip(params, gradients):
                p.grad = g.clone()
            opt.step()
    for a, b, a0 in zip(fused, looped, initial):
        assert (a - a0).abs().max() > 1e-2  # the steps moved the weights
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
