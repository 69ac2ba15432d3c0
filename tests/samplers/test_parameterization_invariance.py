"""Samplers see only D(x, sigma): an eps network and a v network that are both exact for the same
data give the same samples, for every sampler and schedule (through DiscreteDenoiser)."""

import pytest
import torch
from torch import nn

from ldm.diffusion.parametrization import DiscreteDenoiser
from ldm.samplers import SAMPLERS
from ldm.samplers.noise import per_sample_generators
from ldm.samplers.sigmas import get_sigmas
from tests.samplers.gaussian import MU, S

# Stable Diffusion's scaled-linear betas.
BETAS = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
ALPHAS_CUMPROD = torch.cumprod(1 - BETAS, dim=0)


class GaussianOracle(nn.Module):
    """The exact eps or v network for x0 ~ N(MU, S^2), as a function of (z_t, t)."""

    def __init__(self, parameterization: str):
        super().__init__()
        self.parameterization = parameterization
        self.grid = DiscreteDenoiser(nn.Identity(), ALPHAS_CUMPROD)  # for t -> sigma

    def forward(self, z, t, context=None):
        sigma = self.grid.t_to_sigma(t).double()[:, None, None, None]
        alpha_bar = 1 / (1 + sigma**2)
        x = z.double() / alpha_bar.sqrt()  # z = sqrt(alpha_bar) x
        x0 = (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)
        eps = (x - x0) / sigma
        if self.parameterization == "eps":
            return eps.float()
        return (alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0).float()  # v = alpha eps - sigma x0


@pytest.mark.parametrize("schedule", ["discrete", "karras"])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_eps_and_v_oracles_give_the_same_samples(name, schedule):
    eps_model = DiscreteDenoiser(GaussianOracle("eps"), ALPHAS_CUMPROD, "eps")
    v_model = DiscreteDenoiser(GaussianOracle("v"), ALPHAS_CUMPROD, "v")
    sigmas = get_sigmas(eps_model.sigmas, 10, schedule)
    x = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * (1 + sigmas[0] ** 2).sqrt()
    context = torch.zeros(3, 1, 1)
    a = SAMPLERS[name](
        eps_model, x, sigmas, extra_args={"context": context}, generator=per_sample_generators([1, 2, 3])
    )
    b = SAMPLERS[name](
        v_model, x, sigmas, extra_args={"context": context}, generator=per_sample_generators([1, 2, 3])
    )
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # measured: at most 1e-6 (float32)
    assert (a.mean() - MU).abs() < 0.2  # and the samples are samples of the data
