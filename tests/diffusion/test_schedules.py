import math

import pytest
import torch

from ldm.diffusion.schedules import alphas_cumprod_from_betas, make_betas, sigmas_from_alphas_cumprod


def test_scaled_linear_matches_stable_diffusion_sigma_range():
    # SD's schedule has the well-known sigma range [0.0292, 14.6146] (as used by k-diffusion).
    sigmas = sigmas_from_alphas_cumprod(
        alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, 0.00085, 0.012))
    )
    assert sigmas[0].item() == pytest.approx(0.0292, abs=1e-4)
    assert sigmas[-1].item() == pytest.approx(14.6146, abs=1e-3)
    assert torch.all(sigmas[1:] > sigmas[:-1])


def test_betas_endpoints_and_shape():
    lin = make_betas("linear", 10, 1e-4, 0.02)
    assert lin.shape == (10,) and lin.dtype == torch.float64
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    scaled = make_betas("scaled_linear", 10, 0.00085, 0.012)
    assert scaled[0].item() == pytest.approx(0.00085) and scaled[-1].item() == pytest.approx(0.012)
    # linear in sqrt(beta)
    d = scaled.sqrt().diff()
    assert torch.allclose(d, d[0].expand_as(d))


def test_alphas_cumprod_closed_form_for_constant_beta():
    betas = torch.full((5,), 0.1, dtype=torch.float64)
    ac = alphas_cumprod_from_betas(betas)
    assert torch.allclose(ac, torch.tensor([0.9**k for k in range(1, 6)], dtype=torch.float64))
    assert sigmas_from_alphas_cumprod(ac)[0].item() == pytest.approx(math.sqrt(0.1 / 0.9))


@pytest.mark.parametrize(
    "args", [("cosine", 10, 1e-4, 0.02), ("linear", 1, 1e-4, 0.02), ("linear", 10, 0.02, 1e-4)]
)
def test_bad_schedule_arguments_raise(args):
    with pytest.raises(ValueError):
        make_betas(*args)
