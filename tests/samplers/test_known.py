"""ldm/samplers/known.py: every sampler ends on the known latents where they are kept, and draws the
rest as it would without them (the Gaussian denoiser is elementwise, so the two parts do not mix)."""

from __future__ import annotations

import pytest
import torch

from ldm.samplers import SAMPLERS
from ldm.samplers.known import KnownRegion
from tests.samplers.gaussian import gaussian_denoiser, geometric_sigmas


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_the_kept_region_ends_on_the_known_latents(name):
    sample = SAMPLERS[name]
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) * 20
    known = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    keep = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    keep[..., :, :5] = 1  # the left 5 columns are known
    sigmas = geometric_sigmas(10)

    def run(model):
        return sample(model, x_T.clone(), sigmas, generator=torch.Generator().manual_seed(1))

    free, kept = run(gaussian_denoiser), run(KnownRegion(gaussian_denoiser, known, keep))
    inside = keep.expand_as(known).bool()
    torch.testing.assert_close(kept[inside], known[inside], rtol=0, atol=1e-9)
    torch.testing.assert_close(kept[~inside], free[~inside], rtol=0, atol=1e-9)
    assert (free[inside] - known[inside]).abs().max() > 0.1  # the wrapper did it, not the sampler


def test_keep_must_fit_the_latents():
    known = torch.zeros(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"keep \(2, 1, 4, 4\) must match the known latents \(2, 4, 8, 8\)"):
        KnownRegion(gaussian_denoiser, known, torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="keep must be in"):
        KnownRegion(gaussian_denoiser, known, torch.full((2, 1, 8, 8), 2.0))
