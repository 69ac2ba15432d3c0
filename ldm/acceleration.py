"""Opt-in speed switches for the networks: ``torch.compile`` and channels-last memory.

Both leave a module's class, parameters and state-dict keys as they are, so checkpoints written
with them load without them and the other way round:

- :func:`compile_in_place` compiles a module's forward with TorchInductor (``nn.Module.compile``:
  no ``_orig_mod.`` wrapper, the weights stay trainable). Training uses it (``trainer.compile``).
- :func:`compile_frozen` compiles a function for inference with the weights it reads frozen into
  the compiled graph (Inductor's freezing: constants folded, convolution weights packed once for
  the CPU's oneDNN kernels instead of on every call). Sampling uses it (``--compile``); the weights
  must not change afterwards, or the compiled function keeps computing with the old ones. With
  ``cuda_graphs`` (``--cuda-graphs``) Inductor also records each input shape's kernels as a CUDA
  graph and replays it (``mode="reduce-overhead"``): one launch per call instead of one per kernel,
  which is what a small sampling batch spends its time on. Outputs are copied out of the graph's
  memory pool, which the next replay overwrites (multistep samplers keep earlier outputs).
- :func:`channels_last_` stores the 4-D weights in channels-last (NHWC) memory and turns the 4-D
  inputs of the module's forward channels-last; every later activation follows (a convolution
  with a channels-last weight returns a channels-last result).

Compiled and channels-last networks agree with the eager contiguous ones to float32 rounding, not
bit for bit: the kernels add in other orders. The first call compiles (seconds to minutes), and so
does the first call with each new input shape (``dynamic=False``: a validation or sample batch of
another size gets its own graph; Inductor 2.14 failed to lower this U-Net with symbolic sizes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def compile_in_place(module: nn.Module) -> nn.Module:
    """Compile `module`'s forward (TorchInductor) in place; returns `module`, keys unchanged."""
    module.compile(dynamic=False)
    return module


def compile_frozen(function: Callable[..., T], cuda_graphs: bool = False) -> Callable[..., T]:
    """`function` compiled for inference, with the parameters it reads frozen in at its first call;
    with `cuda_graphs`, replayed as a CUDA graph per input shape (on CUDA tensors; Inductor runs other
    devices' calls without graphs), its outputs copies that later calls leave alone."""
    compiled = torch.compile(function, dynamic=False, mode="reduce-overhead" if cuda_graphs else None)

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> T:
        import torch._inductor.config as inductor_config

        # Compilation happens lazily, at the first call of each new input shape: freeze on every call.
        with inductor_config.patch(freezing=True):
            if not cuda_graphs:
                return compiled(*args, **kwargs)
            return replay(compiled, *args, **kwargs)

    return call


def replay(graphed: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """One call of a function compiled with CUDA graphs (mode reduce-overhead), as a new step of the
    graph trees, with its tensor outputs copied out of the memory that the next replay reuses."""
    torch.compiler.cudagraph_mark_step_begin()
    return _copied(graphed(*args, **kwargs))


def _copied(value: Any) -> Any:
    """Tensors cloned, also inside tuples and lists; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copied(item) for item in value)
    return value


class CudaGraphed(nn.Module):
    """`module` compiled with CUDA graphs for inference (Inductor's reduce-overhead mode), its outputs
    copied out of the graphs' memory (``replay``): what ``ldm.bench`` samples with ``bench.cuda_graphs``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.graphed = torch.compile(module, dynamic=False, mode="reduce-overhead")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return replay(self.graphed, *args, **kwargs)


def any_channels_last(*tensors: torch.Tensor) -> bool:
    """Whether any tensor is stored channels-last (and not also contiguous): F.conv2d's rule for
    returning a channels-last result, which the CPU convolution paths of ldm follow."""
    return any(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in tensors)


def _to_channels_last(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.ndim == 4 else a
        for a in args
    )


def channels_last_(module: nn.Module) -> nn.Module:
    """Store `module`'s 4-D parameters channels-last and make its forward's 4-D inputs so; returns it."""
    module.to(memory_format=torch.channels_last)
    module.register_forward_pre_hook(_to_channels_last)
    return module


def accelerate_(module: nn.Module, *, compile: bool = False, channels_last: bool = False) -> nn.Module:
    """Apply the switches that are on to `module` (channels-last first, then compile); returns it."""
    if channels_last:
        channels_last_(module)
    if compile:
        compile_in_place(module)
    return module
