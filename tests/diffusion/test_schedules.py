import math
import re

import pytest
import torch

from ldm.config import DiffusionConfig
from ldm.diffusion.schedules import (
    alphas_cumprod_from_betas,
    alphas_cumprod_from_config,
    make_betas,
    rescale_zero_terminal_snr,
    sigmas_from_alphas_cumprod,
    snr_from_alphas_cumprod,
)


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
    "args,message",
    [
        (("sigmoid", 10, 1e-4, 0.02), "unknown beta schedule 'sigmoid'"),
        (("linear", 1, 1e-4, 0.02), "num_timesteps must be at least 2, got 1"),
        (("linear", 10, 0.02, 1e-4), "need 0 < linear_start < linear_end < 1, got 0.02, 0.0001"),
    ],
)
def test_bad_schedule_arguments_raise(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_betas(*args)


def test_cosine_schedule_matches_its_closed_form():
    # Nichol & Dhariwal 2021, Eq. 17: alpha_bar_t = f(t) / f(0), f(t) = cos((t / T + s) / (1 + s) * pi / 2)^2,
    # wherever the 0.999 clip on beta is not active.
    T, s = 50, 0.008
    ac = alphas_cumprod_from_betas(make_betas("cosine", T, 0.0, 0.0, cosine_s=s))
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = torch.tensor([f[t + 1] / f[0] for t in range(T)], dtype=torch.float64)
    torch.testing.assert_close(ac[:-1], expected[:-1], rtol=1e-12, atol=0)
    betas = make_betas("cosine", T, 0.0, 0.0)
    assert betas.max().item() == pytest.approx(0.999)  # the last beta (f(T) = 0) is clipped
    assert ac[-1].item() == pytest.approx(expected[-2].item() * (1 - 0.999))


def test_zero_terminal_snr_rescaling_follows_algorithm_1():
    betas = make_betas("scaled_linear", 1000, 0.00085, 0.012)
    rescaled = rescale_zero_terminal_snr(betas)
    ac, ac_new = alphas_cumprod_from_betas(betas), alphas_cumprod_from_betas(rescaled)
    assert ac_new[-1].item() == 0.0 and rescaled[-1].item() == 1.0  # SNR 0 at t = T
    assert ac_new[0].item() == pytest.approx(ac[0].item(), rel=1e-12)  # first step kept
    # sqrt(alpha_bar) is shifted and scaled linearly: new = (old - old_T) * old_0 / (old_0 - old_T)
    old = ac.sqrt()
    torch.testing.assert_close(
        ac_new.sqrt(), (old - old[-1]) * old[0] / (old[0] - old[-1]), rtol=1e-9, atol=1e-12
    )
    snr = snr_from_alphas_cumprod(ac_new)
    assert torch.all(snr[1:] < snr[:-1]) and snr[-1].item() == 0.0


def test_config_builds_the_rescaled_schedule():
    cfg = DiffusionConfig(zero_terminal_snr=True, beta_schedule="linear", linear_start=1e-4, linear_end=0.02)
    expected = alphas_cumprod_from_betas(rescale_zero_terminal_snr(make_betas("linear", 1000, 1e-4, 0.02)))
    torch.testing.assert_close(alphas_cumprod_from_config(cfg), expected, rtol=0, atol=0)
    sd = alphas_cumprod_from_config(DiffusionConfig())
    assert sigmas_from_alphas_cumprod(sd)[-1].item() == pytest.approx(14.6146, abs=1e-3)


def test_unknown_schedule_lists_the_choices():
    with pytest.raises(
        ValueError, match="unknown beta schedule 'sigmoid'; available: linear, scaled_linear, cosine"
    ):
        make_betas("sigmoid", 10, 1e-4, 0.02)
