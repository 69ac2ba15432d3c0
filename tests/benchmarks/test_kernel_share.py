"""benchmarks/kernel_share.py: operators sorted into kinds, and the profiled times of a real step."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.mark.parametrize(
    "name, kind",
    [
        ("aten::mkldnn_convolution", "convolution"),
        ("aten::convolution_backward", "convolution"),
        ("aten::mm", "matrix product"),
        ("aten::addmm", "matrix product"),
        ("aten::bmm", "matrix product"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("aten::native_group_norm", "normalization"),
        ("aten::native_layer_norm_backward", "normalization"),
        ("aten::add_", "other"),
        ("aten::copy_", "other"),
        ("aten::silu", "other"),
    ],
)
def test_operators_are_sorted_into_kinds(load_benchmark, name, kind):
    assert load_benchmark("kernel_share").kind_of(name) == kind


def test_a_linear_layers_time_is_all_matrix_product_and_sums_to_the_wall_time(load_benchmark):
    share = load_benchmark("kernel_share")
    layer = nn.Linear(256, 256, bias=False)
    x = torch.randn(512, 256)
    times = share.profile_calls(lambda: layer(x), calls=3)
    assert set(times) <= {"matrix product", "other", "outside ATen"}
    assert times["matrix product"] > 10 * times.get("other", 0.0)  # the product, not the transpose view
    row = share.table({"linear": {"ours": times}}).splitlines()[2].split(" | ")
    total_ms = sum(times.values()) * 1e3
    assert row[:2] == ["| linear", "ours"] and float(row[-2]) == pytest.approx(total_ms, abs=0.06)
    assert row[-1] == f"{times['matrix product'] / sum(times.values()):.0%} |"
