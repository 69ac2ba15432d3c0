"""UniPC: the corrector raises the order by one; bad options are rejected."""

import pytest
import torch

from ldm.samplers.unipc import sample_unipc
from tests.samplers.gaussian import ode_error, orders

STEPS = (25, 50, 100, 200)


@pytest.mark.parametrize(
    "options,band",
    [
        ({"use_corrector": False}, (1.8, 2.2)),  # UniP-2 alone: second order
        ({"variant": "bh1"}, (2.7, 3.3)),  # UniPC-2 with either B(h): third order
        ({"order": 1}, (1.8, 2.2)),  # UniP-1 (DDIM) + UniC-1: second order
    ],
)
def test_unipc_orders(options, band):
    observed = orders([ode_error(sample_unipc, n, **options) for n in STEPS])
    assert all(band[0] < p < band[1] for p in observed), observed


@pytest.mark.parametrize(
    "options,message",
    [({"order": 4}, "order must be 1, 2 or 3"), ({"variant": "bh3"}, "unknown UniPC variant 'bh3'")],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        sample_unipc(lambda x, s: x, torch.zeros(1, 1), torch.tensor([1.0, 0.0]), **options)


def test_unipc_order_3_reaches_fourth_order():
    # Measured: 3.85, 4.21 (pre-asymptotic; the order keeps rising past 200 steps as terms cancel).
    observed = orders([ode_error(sample_unipc, n, order=3) for n in (50, 100, 200)])
    assert all(3.5 < p < 4.5 for p in observed), observed
