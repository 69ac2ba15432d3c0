import pytest
import torch

from ldm.samplers.guidance import CFGDenoiser


class Linear:
    """D(x, sigma, context) = x + context, counting calls."""

    calls = 0

    def __call__(self, x, sigma, context):
        self.calls += 1
        return x + context


def test_guidance_formula_in_one_batched_call():
    d = Linear()
    x, sigma = torch.zeros(2, 3), torch.ones(2)
    cond, uncond = torch.full((2, 3), 2.0), torch.full((2, 3), 0.5)
    out = CFGDenoiser(d, 4.0)(x, sigma, cond, uncond)
    torch.testing.assert_close(out, torch.full((2, 3), 0.5 + 4.0 * 1.5))
    assert d.calls == 1


@pytest.mark.parametrize("scale,expected", [(1.0, 2.0), (0.0, 0.5)])
def test_scale_one_is_conditional_and_zero_unconditional(scale, expected):
    out = CFGDenoiser(Linear(), scale)(
        torch.zeros(1, 3), torch.ones(1), torch.full((1, 3), 2.0), torch.full((1, 3), 0.5)
    )
    torch.testing.assert_close(out, torch.full((1, 3), expected))


def test_negative_scale_raises():
    with pytest.raises(ValueError):
        CFGDenoiser(Linear(), -1.0)
