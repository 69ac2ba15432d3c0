"""DDPM's ancestral step, derived three ways (Ho et al. Eq. 7; DDIM with eta = 1; the VE posterior
of Euler ancestral with eta = 1), gives the same samples from the same noise; DDIM with eta = 0 is
Euler's method."""

import torch

from ldm.samplers import sample_ddim, sample_ddpm, sample_euler, sample_euler_ancestral
from ldm.samplers.noise import per_sample_generators
from tests.samplers.gaussian import gaussian_denoiser, geometric_sigmas


def test_ddpm_ddim_eta1_and_euler_ancestral_agree():
    sigmas = geometric_sigmas(12)
    x = torch.randn(4, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 20
    seeds = [3, 4, 5, 6]
    ddpm = sample_ddpm(gaussian_denoiser, x.clone(), sigmas, generator=per_sample_generators(seeds))
    ddim = sample_ddim(gaussian_denoiser, x.clone(), sigmas, generator=per_sample_generators(seeds), eta=1.0)
    euler_a = sample_euler_ancestral(
        gaussian_denoiser, x.clone(), sigmas, generator=per_sample_generators(seeds)
    )
    torch.testing.assert_close(ddim, ddpm, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(euler_a, ddpm, rtol=1e-10, atol=1e-10)


def test_ddpm_one_step_returns_the_denoised_estimate():
    x = torch.full((2, 3), 7.0, dtype=torch.float64)
    sigmas = torch.tensor([5.0, 0.0], dtype=torch.float64)
    out = sample_ddpm(gaussian_denoiser, x, sigmas)
    torch.testing.assert_close(out, gaussian_denoiser(x, sigmas[:1].expand(2)))


def test_deterministic_ddim_is_eulers_method():
    sigmas = geometric_sigmas(9)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 20
    euler = sample_euler(gaussian_denoiser, x.clone(), sigmas)
    torch.testing.assert_close(
        sample_ddim(gaussian_denoiser, x.clone(), sigmas), euler, rtol=1e-12, atol=1e-12
    )
