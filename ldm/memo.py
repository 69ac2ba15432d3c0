"""A value computed from tensors, kept while they stay the same tensors, unchanged: for inference
loops that derive the same thing from the same inputs on every step.

A sampling run passes the same text context to the denoiser on every step, so what is derived from
it alone (the guided batch's concatenated context, each cross-attention's keys and values) is the
same on every step. :class:`TensorMemo` keeps the last such value and returns it again while every
input is the same tensor object (held by weak reference) with the same version counter (bumped by
every in-place change) and storage. It recomputes whenever gradients are recorded (a kept value
would have no graph, or a stale one), in inference mode (inference tensors have no version
counter) and while ``torch.compile`` traces (the compiled graph computes the value itself).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, Optional, TypeVar

import torch

T = TypeVar("T")


class TensorMemo(Generic[T]):
    """The last value of ``compute()`` for a sequence of input tensors; see the module docstring."""

    def __init__(self) -> None:
        self._entry: Optional[tuple[list[weakref.ref], list[tuple[int, int]], T]] = None

    def get(self, inputs: Sequence[torch.Tensor], compute: Callable[[], T]) -> T:
        """``compute()``, or the value it gave last time for these same, unchanged `inputs`."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or any(t.is_inference() for t in inputs):
            return compute()
        state = [(t._version, t.data_ptr()) for t in inputs]
        entry = self._entry
        if entry is not None and entry[1] == state and all(r() is t for r, t in zip(entry[0], inputs)):
            return entry[2]
        value = compute()
        self._entry = ([weakref.ref(t) for t in inputs], state, value)
        return value

    def __getstate__(self) -> dict[str, Any]:
        return {"_entry": None}  # weak references do not pickle; a copy starts empty
