import pytest
import torch

from ldm.diffusion.objective import q_sample, training_target
from ldm.diffusion.parametrization import DiscreteDenoiser, preconditioning
from ldm.diffusion.schedules import alphas_cumprod_from_betas, make_betas, rescale_zero_terminal_snr
from ldm.samplers.ddim import sample_ddim
from ldm.samplers.sigmas import discrete_sigmas

ALPHAS_CUMPROD = alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, 0.00085, 0.012))
DATA_STD = 0.7


class OracleNetwork(torch.nn.Module):
    """Predicts the exact target of each parametrisation for Gaussian data N(0, DATA_STD^2)."""

    def __init__(self, parameterization):
        super().__init__()
        self.parameterization = parameterization

    def forward(self, z_t, t, context):
        a = ALPHAS_CUMPROD.float()[t.round().long()][:, None, None, None]
        # Posterior mean of z0 given z_t for Gaussian data (the exact denoiser in VP form)
        z0 = a.sqrt() * DATA_STD**2 * z_t / (a * DATA_STD**2 + 1 - a)
        eps = (z_t - a.sqrt() * z0) / (1 - a).sqrt()
        return training_target(z0, eps, a.flatten(), self.parameterization)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_every_parametrization_gives_the_exact_gaussian_denoiser(parameterization):
    denoiser = DiscreteDenoiser(OracleNetwork(parameterization), ALPHAS_CUMPROD, parameterization)
    t = torch.tensor([0, 10, 500, 999])
    sigma = denoiser.sigmas[t]
    x = torch.randn(4, 2, 3, 3) * (DATA_STD**2 + sigma[:, None, None, None] ** 2).sqrt()
    expected = x * DATA_STD**2 / (DATA_STD**2 + sigma[:, None, None, None] ** 2)  # closed form
    torch.testing.assert_close(denoiser(x, sigma, None), expected, rtol=1e-4, atol=1e-5)


def test_sigma_to_t_round_trip():
    denoiser = DiscreteDenoiser(torch.nn.Identity(), ALPHAS_CUMPROD)
    t = torch.tensor([0, 1, 37, 500, 998, 999])
    torch.testing.assert_close(denoiser.sigma_to_t(denoiser.sigmas[t]), t.float(), atol=1e-3, rtol=0)
    half = torch.tensor([10.5, 700.25])
    torch.testing.assert_close(denoiser.sigma_to_t(denoiser.t_to_sigma(half)), half, atol=1e-3, rtol=0)


def test_preconditioning_values_at_sigma_one():
    s = torch.tensor([1.0])
    c_skip, c_out, c_in = preconditioning(s, "v")
    assert (c_skip.item(), c_out.item(), c_in.item()) == pytest.approx((0.5, -(0.5**0.5), 0.5**0.5))
    assert preconditioning(s, "eps")[1].item() == -1.0


def test_q_sample_is_vp_scaling_of_sigma_form():
    z0, noise = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    a = ALPHAS_CUMPROD.float()[torch.tensor([3, 800])]
    sigma = ((1 - a) / a).sqrt()[:, None, None, None]
    torch.testing.assert_close(q_sample(z0, a, noise), (z0 + sigma * noise) / (1 + sigma**2).sqrt())


def test_unknown_parameterization_raises():
    with pytest.raises(ValueError, match="unknown parameterization"):
        DiscreteDenoiser(torch.nn.Identity(), ALPHAS_CUMPROD, "score")


ZTSNR = alphas_cumprod_from_betas(
    rescale_zero_terminal_snr(make_betas("scaled_linear", 1000, 0.00085, 0.012))
)


class PointMassOracle(torch.nn.Module):
    """The exact network for data that is always `m`: from z_t = sqrt(a) m + sqrt(1 - a) eps it knows eps."""

    def __init__(self, m, parameterization):
        super().__init__()
        self.m, self.parameterization = m, parameterization

    def forward(self, z_t, t, context):
        a = ZTSNR.float()[t.round().long()][:, None, None, None]
        eps = (z_t - a.sqrt() * self.m) / (1 - a).sqrt()
        return training_target(self.m.expand_as(z_t), eps, a.flatten(), self.parameterization)


@pytest.mark.parametrize("parameterization", ["v", "x0"])
def test_zero_terminal_snr_starts_sampling_at_the_true_last_timestep(parameterization):
    m = torch.tensor([0.5, -1.0, 2.0, 0.0])[None, :, None, None].expand(1, 4, 3, 3)
    denoiser = DiscreteDenoiser(PointMassOracle(m, parameterization), ZTSNR, parameterization)
    sigma_max = denoiser.sigma_max.item()
    assert ZTSNR[-1].item() == 0.0 and sigma_max == pytest.approx(((1 - 2**-24) / 2**-24) ** 0.5, rel=1e-6)
    assert denoiser.sigma_to_t(denoiser.sigmas[-1:]).item() == pytest.approx(999, abs=1e-3)
    z_T = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    x = z_T * (1 + sigma_max**2) ** 0.5  # how samplers start
    d = denoiser(x, denoiser.sigmas[[-1, -1]], None)
    # x0: exactly m; v: m + z_T / sqrt(1 + sigma_max^2), i.e. within 1/4096 of m per unit of noise
    tolerance = 1e-5 if parameterization == "x0" else 1.01 / 4096 * z_T.abs().max().item()
    assert (d - m).abs().max().item() <= tolerance
    sigmas = discrete_sigmas(denoiser.sigmas, 10, "trailing")
    assert sigmas[0] == denoiser.sigma_max and torch.isfinite(sigmas).all()
    torch.testing.assert_close(
        sample_ddim(denoiser, x, sigmas, extra_args={"context": None}),
        m.expand(2, 4, 3, 3),
        rtol=0,
        atol=1e-4,
    )
