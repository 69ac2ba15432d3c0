"""ldm/diffusion/distillation.py: the two-step DDIM target against the closed form of Gaussian data, the
student's parametrisations and loss weights against the paper's definitions, the guided target against CFG."""

from __future__ import annotations

import math

import pytest
import torch

from ldm.config import DiffusionConfig
from ldm.diffusion.distillation import (
    distillation_loss,
    distillation_sigmas,
    distillation_step_loss,
    guided_denoised,
    loss_weights,
    network_target,
    progressive_distillation_target,
    sample_guidance_scales,
)
from ldm.diffusion.parametrization import DiscreteDenoiser, finite_alphas_cumprod
from ldm.diffusion.schedules import alphas_cumprod_from_config, sigmas_from_alphas_cumprod
from ldm.samplers.ddim import sample_ddim
from ldm.samplers.guidance import CFGDenoiser
from ldm.samplers.noise import per_sample_generators
from tests.conftest import assert_float32_close, random_tiny_unet
from tests.samplers.gaussian import MU, S, gaussian_denoiser


class Fixed(torch.nn.Module):
    """A "network" whose output is a given tensor, whatever its input."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.out


def model_sigmas(zero_terminal_snr: bool = False) -> torch.Tensor:
    """SD's scaled-linear schedule of 1000 steps (float64), as the denoiser wrapper sees it."""
    alphas_cumprod = alphas_cumprod_from_config(DiffusionConfig(zero_terminal_snr=zero_terminal_snr))
    return sigmas_from_alphas_cumprod(finite_alphas_cumprod(alphas_cumprod))


def ddim_gain(s: float, s_next: float) -> float:
    """A deterministic DDIM step with the exact Gaussian denoiser maps x - MU to gain * (x - MU):
    D - MU = k (x - MU) with k = S^2 / (S^2 + s^2), and x' = D + s' (x - D) / s."""
    k = S**2 / (S**2 + s**2)
    return k + s_next / s * (1 - k)


def closed_form_target(s: float, s_mid: float, s_next: float) -> tuple[float, float]:
    """(gain of the teacher's two steps, gain of the student's x-target) on x - MU, in plain floats."""
    two_steps = ddim_gain(s, s_mid) * ddim_gain(s_mid, s_next)
    r = s_next / s
    return two_steps, (two_steps - r) / (1 - r)


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
@pytest.mark.parametrize("student_steps", [1, 2, 4, 8, 64])
def test_two_step_target_is_the_closed_form_of_gaussian_data(student_steps, zero_terminal_snr):
    student, teacher = distillation_sigmas(model_sigmas(zero_terminal_snr), student_steps)
    sigma, sigma_mid, sigma_next = student[:-1], teacher[1::2], student[1:]  # one sample per student step
    x = MU + torch.linspace(-3, 3, 7, dtype=torch.float64)[None, :] * (S**2 + sigma[:, None] ** 2).sqrt()
    x = x[:, None, :, None]  # [N, 1, 7, 1]
    target = progressive_distillation_target(gaussian_denoiser, x, sigma, sigma_mid, sigma_next)
    for i in range(student_steps):
        s, s_mid, s_next = (float(v[i]) for v in (sigma, sigma_mid, sigma_next))
        two_steps, gain = closed_form_target(s, s_mid, s_next)
        expected = MU + gain * (x[i] - MU)
        torch.testing.assert_close(target[i], expected, rtol=1e-10, atol=1e-10)
        # The paper's variance-preserving form: z = alpha y, x~ = (z'' - (sigma''/sigma) z) / (alpha'' - ...)
        alpha, alpha_next = 1 / math.sqrt(1 + s**2), 1 / math.sqrt(1 + s_next**2)
        vp_sigma, vp_sigma_next = s * alpha, s_next * alpha_next
        z, z_next = alpha * x[i], alpha_next * (MU + two_steps * (x[i] - MU))
        ratio = vp_sigma_next / vp_sigma
        paper = (z_next - ratio * z) / (alpha_next - ratio * alpha)
        torch.testing.assert_close(target[i], paper, rtol=1e-9, atol=1e-9)
    if zero_terminal_snr:  # the first student step starts from (the stand-in of) pure noise
        assert sigma[0] > 4000


@pytest.mark.parametrize("student_steps", [1, 2, 4])
def test_a_student_that_predicts_the_target_samples_its_teacher_in_half_the_steps(student_steps):
    sigmas = model_sigmas()
    student_sigmas, teacher_sigmas = distillation_sigmas(sigmas, student_steps)

    def student(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # the optimum: exactly the target
        i = int((student_sigmas == sigma[0]).nonzero())
        ones = torch.ones_like(sigma)
        return progressive_distillation_target(
            gaussian_denoiser, x, sigma, teacher_sigmas[2 * i + 1] * ones, student_sigmas[i + 1] * ones
        )

    x_T = MU + torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None] * math.sqrt(1 + sigmas[-1].item() ** 2)
    by_teacher = sample_ddim(gaussian_denoiser, x_T.clone(), teacher_sigmas)
    by_student = sample_ddim(student, x_T.clone(), student_sigmas)
    torch.testing.assert_close(by_student, by_teacher, rtol=1e-12, atol=1e-12)
    gain = math.prod(ddim_gain(float(a), float(b)) for a, b in zip(teacher_sigmas, teacher_sigmas[1:]))
    torch.testing.assert_close(by_teacher, MU + gain * (x_T - MU), rtol=1e-12, atol=1e-12)


def test_the_loss_is_zero_at_the_closed_form_and_the_weighted_error_elsewhere():
    sigmas = model_sigmas()
    student_sigmas, teacher_sigmas = distillation_sigmas(sigmas, 4)
    triples = [
        (float(s), float(m), float(n))
        for s, m, n in zip(student_sigmas, teacher_sigmas[1::2], student_sigmas[1:])
    ]
    gains = {s: closed_form_target(s, m, n)[1] for s, m, n in triples}

    def optimum(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        gain = torch.tensor([gains[float(s)] for s in sigma], dtype=x.dtype)[:, None, None, None]
        return MU + gain * (x - MU)

    def off_by(delta: float):  # an error of delta / sqrt(weight) costs exactly delta^2 after weighting
        def student(x, sigma):
            return optimum(x, sigma) + delta * loss_weights(sigma, "v").rsqrt()[:, None, None, None]

        return student

    z0 = MU + S * torch.randn(64, 4, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    generators = per_sample_generators(range(64))
    args = (gaussian_denoiser, z0, student_sigmas, teacher_sigmas, "v")
    assert distillation_step_loss(optimum, *args, generator=generators).item() < 1e-20
    loss = distillation_step_loss(off_by(0.3), *args, generator=per_sample_generators(range(64)))
    assert loss.item() == pytest.approx(0.09, rel=1e-6)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_network_targets_are_the_papers_definitions(parameterization):
    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([0.05, 1.0, 14.6])
    x, target = torch.randn(3, 4, 2, 2, generator=g) * 3, torch.randn(3, 4, 2, 2, generator=g)
    out = network_target(target, x, sigma, parameterization)
    # Variance preserving: z = alpha x, sigma_vp = sigma alpha;
    # eps = (z - alpha x~) / sigma_vp, v = alpha eps - sigma_vp x~
    alpha = (1 + sigma**2).rsqrt()[:, None, None, None]
    vp_sigma = sigma[:, None, None, None] * alpha
    eps = (alpha * x - alpha * target) / vp_sigma
    expected = {"eps": eps, "v": alpha * eps - vp_sigma * target, "x0": target}[parameterization]
    torch.testing.assert_close(out, expected)
    # ... and the denoiser wrapper maps that output back to the target
    wrapper = DiscreteDenoiser(Fixed(out), torch.linspace(0.99, 0.01, 10), parameterization)
    torch.testing.assert_close(wrapper(x, sigma, None), target, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weighting", ["truncated_snr", "uniform"])
def test_v_loss_weights_are_truncated_snr_or_the_plain_mse_of_v(weighting):
    g = torch.Generator().manual_seed(2)
    sigma = torch.tensor([0.1, 0.9, 1.1, 10.0])  # SNR 100, 1.23, 0.83, 0.01
    x, target, denoised = (torch.randn(4, 4, 2, 2, generator=g) for _ in range(3))
    v_error = (network_target(denoised, x, sigma, "v") - network_target(target, x, sigma, "v")).pow(2)
    snr = sigma.pow(-2)
    per_v = snr.clamp(min=1) / (snr + 1) if weighting == "truncated_snr" else torch.ones(4)
    expected = (per_v * v_error.flatten(1).mean(dim=1)).mean()
    torch.testing.assert_close(distillation_loss(denoised, target, sigma, "v", weighting), expected)
    x_error = (denoised - target).pow(2).flatten(1).mean(dim=1)
    if weighting == "truncated_snr":  # Salimans & Ho 2022, Sec. 4: max(SNR, 1) on the x error, whatever F is
        torch.testing.assert_close(
            distillation_loss(denoised, target, sigma, "eps", weighting), (snr.clamp(min=1) * x_error).mean()
        )


def test_guided_target_is_classifier_free_guidance():
    torch.manual_seed(0)
    denoiser = DiscreteDenoiser(
        random_tiny_unet(), alphas_cumprod_from_config(DiffusionConfig()), "eps"
    ).eval()
    g = torch.Generator().manual_seed(3)
    x, sigma = torch.randn(3, 4, 8, 8, generator=g) * 2, torch.tensor([0.3, 2.0, 7.0])
    context, uncond = torch.randn(3, 5, 16, generator=g), torch.randn(3, 5, 16, generator=g)
    scale = torch.tensor([1.0, 3.5, 8.0])
    with torch.no_grad():
        guided = guided_denoised(denoiser, x, sigma, context, uncond, scale)
        for b in range(3):  # one sample at a time, so that both batch the same two rows
            row = (x[b : b + 1], sigma[b : b + 1], context[b : b + 1], uncond[b : b + 1])
            cfg = CFGDenoiser(denoiser, float(scale[b]))(*row)
            if scale[b] == 1:  # CFGDenoiser skips the unconditional call: D_c against D_u + (D_c - D_u)
                torch.testing.assert_close(guided_denoised(denoiser, *row, scale[b : b + 1]), cfg)
            else:
                assert torch.equal(guided_denoised(denoiser, *row, scale[b : b + 1]), cfg)
            assert_float32_close(guided[b : b + 1], cfg, scale=float(scale[b]) * x.abs().max())
        # in a v student's parametrisation: CFG of the eps teacher's raw outputs; v = alpha eps - sigma x0
        t = denoiser.sigma_to_t(sigma)
        alpha = (1 + sigma**2).rsqrt()[:, None, None, None]
        eps_c, eps_u = (denoiser.diffusion_model(x * alpha, t, c) for c in (context, uncond))
        eps = eps_u + scale[:, None, None, None] * (eps_c - eps_u)
        vp_sigma = sigma[:, None, None, None] * alpha
        x0 = (alpha * x - vp_sigma * eps) / alpha
        # float32 rounding of the network's outputs, times w, times 1 / alpha from x0 = (z - sigma eps) / alpha
        rounding = (scale.max() / alpha.min() * torch.stack([eps_c, eps_u]).abs().max()).item()
        assert_float32_close(network_target(guided, x, sigma, "v"), alpha * eps - vp_sigma * x0, rounding)


def test_teacher_grids_contain_the_student_grids():
    sigmas = model_sigmas()
    for steps in [1, 2, 3, 4, 5, 8, 16, 25, 32, 64, 100, 128, 256, 500]:
        student, teacher = distillation_sigmas(sigmas, steps)
        assert student.shape == (steps + 1,) and teacher.shape == (2 * steps + 1,)
        assert torch.equal(teacher[::2], student) and student[-1] == 0
        assert (teacher[1::2] < student[:-1]).all() and (teacher[1::2] > student[1:]).all()
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        distillation_sigmas(sigmas, 501)  # the teacher would need 1002 timesteps


def test_guidance_scales_are_uniform_per_sample_and_independent_of_the_batch():
    first = sample_guidance_scales(4, [2.0, 6.0], torch.device("cpu"), per_sample_generators([5, 6, 7, 8]))
    alone = sample_guidance_scales(1, [2.0, 6.0], torch.device("cpu"), per_sample_generators([7]))
    assert first[2] == alone[0]
    many = sample_guidance_scales(20000, [2.0, 6.0], torch.device("cpu"), torch.Generator().manual_seed(0))
    assert many.min() >= 2 and many.max() <= 6
    assert many.mean().item() == pytest.approx(4.0, abs=0.05)  # U[2, 6]: mean 4, std 4/sqrt(12)
    assert many.std().item() == pytest.approx(4 / math.sqrt(12), abs=0.02)
