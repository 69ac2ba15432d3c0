"""ldm/flops.py: FLOPs counted with torch's formulas, attention included whichever kernel runs it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm.flops import FlopCount


@pytest.mark.parametrize("mask", [False, True])
def test_attention_counts_its_two_products_whatever_the_kernel(mask):
    # B=2, H=3, L=5 queries, S=7 keys, E=8: QK^T and AV are B*H*L*S*E multiply-adds each. The
    # backward pass forms four such products (dV, dP, dQ, dK). A CPU runs the flash kernel (counted
    # by ldm.flops' own formula) or the math path (counted through its bmm calls): the same totals.
    b, h, length, s, e = 2, 3, 5, 7, 8
    q = torch.randn(b, h, length, e, requires_grad=True)
    k, v = torch.randn(b, h, s, e, requires_grad=True), torch.randn(b, h, s, e, requires_grad=True)
    attn_mask = torch.zeros(length, s) if mask else None
    with FlopCount() as forward:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    with FlopCount() as backward:
        out.sum().backward()
    products = b * h * length * s * e
    assert forward.total == 2 * 2 * products
    assert backward.total == 2 * 4 * products


def test_linear_layer_closed_form():
    layer = torch.nn.Linear(16, 4)
    with FlopCount() as counter:
        layer(torch.randn(3, 16))
    assert counter.total == 2 * 3 * 16 * 4
