import pytest
import torch
from torch import nn

from ldm.diffusion.scaling import estimate_scale_factor


class Posterior:
    def __init__(self, z):
        self.z = z

    def sample(self):
        return self.z


class ScaledIdentity(nn.Module):
    """'Encodes' x to 3 * x, so the latent std is 3 * std(x)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def encode(self, x):
        return Posterior(3 * x)


def test_scale_factor_is_one_over_latent_std():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(64, 4, 8, 8, generator=g) * 0.5 for _ in range(4)]
    expected = 1.0 / (3 * torch.cat([b.flatten() for b in batches[:2]])).std().item()
    assert estimate_scale_factor(ScaledIdentity(), iter(batches), max_batches=2) == pytest.approx(expected)
    # about 1 / (3 * 0.5)
    assert estimate_scale_factor(ScaledIdentity(), iter(batches), max_batches=4) == pytest.approx(
        1 / 1.5, rel=0.02
    )


def test_bad_input():
    with pytest.raises(ValueError, match="max_batches"):
        estimate_scale_factor(ScaledIdentity(), iter([]), max_batches=0)
    with pytest.raises(ValueError, match="no batches"):
        estimate_scale_factor(ScaledIdentity(), iter([]), max_batches=2)
    with pytest.raises(ValueError, match="degenerate"):
        estimate_scale_factor(ScaledIdentity(), iter([torch.zeros(2, 4)]), max_batches=1)
