"""FLOP counting with torch's formulas, running every op unchanged.

``torch.utils.flop_counter.FlopCounterMode`` runs ops that have no formula through their
decompositions, which changes results in the last bits (and so a whole training run that counts
its first step). ``FlopCount`` only adds up the formulas of the ops it sees and runs each op as
it is. Counted: matrix products, convolutions and attention (2 FLOPs per multiply-add), forward
and backward; element-wise work is not.

Attention is counted as model FLOPs, whichever kernel runs it: QK^T and AV forward, and the four
products of their gradients backward. torch's registry has no formula for the CPU flash kernel
that ``scaled_dot_product_attention`` dispatches to on CPUs (so attention counted zero there), and
its flash, memory-efficient and cuDNN backward formulas add the recomputation of QK^T that those
kernels do, which the math kernel (counted through its ``bmm`` calls) does not: the same model
would count differently on different machines. :data:`ATTENTION_FORMULAS` makes every fused
kernel count what the math kernel counts (MFU as Chowdhery et al. 2022 define it: recomputation
is not model work).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

aten = torch.ops.aten


def _attention_forward(query, key, value, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    """QK^T and AV over [B, H, L, E] inputs."""
    return sdpa_flop_count(query.shape, key.shape, value.shape)


def _attention_backward(grad_out, query, key, value, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    """The gradients of QK^T and AV: dV, dP, dQ and dK, each the size of one forward product."""
    return 2 * sdpa_flop_count(query.shape, key.shape, value.shape)


ATTENTION_FORMULAS: dict[Any, Callable[..., int]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _attention_forward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward,
    aten._scaled_dot_product_flash_attention_backward: _attention_backward,
    aten._scaled_dot_product_efficient_attention_backward: _attention_backward,
    aten._scaled_dot_product_cudnn_attention_backward: _attention_backward,
}
"""Attention formulas that replace or complete torch's ``flop_registry``, by op packet."""


def flop_formula(func: Any) -> Callable[..., int] | None:
    """The FLOP formula of an aten op (ours for attention, else torch's), or None for ops not counted."""
    packet = func._overloadpacket
    return ATTENTION_FORMULAS.get(packet) or flop_registry.get(packet)


class FlopCount(TorchDispatchMode):
    """Within the block, adds up the FLOPs of every op that has a formula; runs each op unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_formula(func)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out
