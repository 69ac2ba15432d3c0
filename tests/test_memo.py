"""Tests for ldm/memo.py: a kept value is returned only for the same, unchanged tensors, without autograd."""

import copy
import pickle

import torch

from ldm.memo import TensorMemo


def counting(value_of):
    calls = []

    def compute():
        calls.append(1)
        return value_of()

    return compute, calls


def test_the_value_is_kept_for_the_same_unchanged_tensors():
    memo: TensorMemo[torch.Tensor] = TensorMemo()
    a, b = torch.ones(3), torch.arange(3.0)
    compute, calls = counting(lambda: a + b)
    with torch.no_grad():
        first = memo.get((a, b), compute)
        assert memo.get((a, b), compute) is first and len(calls) == 1
        a.add_(1)  # in place: the version counter moves
        assert torch.equal(memo.get((a, b), compute), torch.tensor([2.0, 3.0, 4.0])) and len(calls) == 2
        memo.get((a.clone(), b), compute)  # equal values, another tensor
        assert len(calls) == 3
        memo.get((a, b), compute)  # the last entry was for the clone
        assert len(calls) == 4


def test_nothing_is_kept_under_autograd_or_in_inference_mode():
    memo: TensorMemo[torch.Tensor] = TensorMemo()
    w = torch.ones(2, requires_grad=True)
    compute, calls = counting(lambda: w * 2)
    out = memo.get((w,), compute)
    assert out.requires_grad and memo.get((w,), compute) is not out and len(calls) == 2
    with torch.inference_mode():
        x = torch.ones(2)
        compute, calls = counting(lambda: x * 2)
        memo.get((x,), compute), memo.get((x,), compute)
        assert len(calls) == 2


def test_copies_start_empty():
    memo: TensorMemo[torch.Tensor] = TensorMemo()
    x = torch.ones(2)
    with torch.no_grad():
        memo.get((x,), lambda: x * 2)
        for copied in (copy.deepcopy(memo), pickle.loads(pickle.dumps(memo))):
            compute, calls = counting(lambda: x * 3)
            assert torch.equal(copied.get((x,), compute), torch.full((2,), 3.0)) and calls == [1]
