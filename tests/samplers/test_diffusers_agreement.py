"""Agreement with diffusers' schedulers, an independent implementation of the same algorithms.

Each diffusers scheduler is driven with a fixed toy eps network (a linear function of z, smooth in
t) and Stable Diffusion's scaled-linear betas, the usual way (scale_model_input, model, step). Our
sampler gets the same network through DiscreteDenoiser, the same starting noise, and the
scheduler's own noise levels (its sigmas, or sqrt((1 - alpha_bar_t) / alpha_bar_t) at its
timesteps, then 0), and must end at the same latents to 1e-4 relative error.

Conventions matched deliberately: every scheduler is configured to end at sigma = 0
(set_alpha_to_one=True for DDIM and PNDM; final_sigmas_type="zero" for the others), which is what
our schedules do; DDIM, Euler and Heun use trailing timesteps, so that the timesteps are integers
and our sigma -> t interpolation recovers them exactly. Euler and Heun work in the sigma form as we
do, but start from x = sigma_max * z for linspace and trailing spacings (k-diffusion's habit), where
our pipeline starts from sqrt(1 + sigma_max^2) * z (the variance-preserving chain's z_T ~ N(0, I)); to
compare the samplers, ours is started from their x there.
"""

import pytest
import torch
from torch import nn

from ldm.diffusion.parametrization import DiscreteDenoiser
from ldm.samplers import SAMPLERS
from ldm.samplers.sigmas import get_sigmas

diffusers = pytest.importorskip("diffusers")

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
TOLERANCE = 1e-5  # the brief asks 1e-4; measured 1e-7 to 5e-7 (float32 rounding)


class ToyEps(nn.Module):
    """eps(z, t) = (0.3 + 0.7 t/1000) W z + cos(3 t/1000) b, with W near the identity."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("weight", torch.eye(4) + 0.1 * torch.randn(4, 4, generator=g))
        self.register_buffer("bias", 0.2 * torch.randn(4, generator=g))

    def forward(self, z, t, context=None):
        u = (torch.as_tensor(t, dtype=z.dtype) / 1000).reshape(-1, 1, 1, 1)
        mixed = torch.einsum("oc,bchw->bohw", self.weight, z)
        return (0.3 + 0.7 * u) * mixed + torch.cos(3 * u) * self.bias[None, :, None, None]


def run_diffusers(scheduler, steps: int, noise: torch.Tensor) -> torch.Tensor:
    """The scheduler's own sampling loop; returns the final sample."""
    net = ToyEps()
    scheduler.set_timesteps(steps)
    z = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = net(scheduler.scale_model_input(z, t), t)
        z = scheduler.step(eps, t, z).prev_sample
    return z


def run_ours(name: str, sigmas: torch.Tensor, x: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    model = DiscreteDenoiser(ToyEps(), alphas_cumprod, "eps")
    return SAMPLERS[name](model, x, sigmas, extra_args={"context": None})


def start(scheduler, sigmas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Our starting x for the scheduler's: its own for sigma-form schedulers, else z_T in sigma form."""
    if isinstance(scheduler, (diffusers.EulerDiscreteScheduler, diffusers.HeunDiscreteScheduler)):
        return noise * scheduler.init_noise_sigma
    return noise * (1 + sigmas[0] ** 2).sqrt()  # z_T = noise in the variance-preserving chain


def sigmas_at(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """sqrt((1 - alpha_bar) / alpha_bar) at the given (distinct, descending) timesteps, then 0."""
    alpha_bar = scheduler.alphas_cumprod[timesteps.long()]
    return torch.cat([((1 - alpha_bar) / alpha_bar).sqrt(), torch.zeros(1)])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def noise_for(steps: int) -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(steps))


CASES = {
    # name: (scheduler factory, how to read its sigmas)
    "ddim": (
        lambda: diffusers.DDIMScheduler(
            **SD_BETAS, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing"
        ),
        lambda s: sigmas_at(s, s.timesteps),
    ),
    "plms": (
        lambda: diffusers.PNDMScheduler(
            **SD_BETAS, skip_prk_steps=True, set_alpha_to_one=True, steps_offset=1
        ),
        lambda s: sigmas_at(s, torch.unique_consecutive(s.timesteps)),  # its first timestep is repeated
    ),
    "euler": (
        lambda: diffusers.EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing"),
        lambda s: s.sigmas,
    ),
    "heun": (
        lambda: diffusers.HeunDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing"),
        lambda s: torch.unique_consecutive(s.sigmas),  # interior sigmas appear twice
    ),
    "dpmpp_2m": (
        lambda: diffusers.DPMSolverMultistepScheduler(
            **SD_BETAS, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero"
        ),
        lambda s: s.sigmas,
    ),
    "unipc": (
        lambda: diffusers.UniPCMultistepScheduler(**SD_BETAS, final_sigmas_type="zero"),
        lambda s: s.sigmas,
    ),
}


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic_samplers_match_diffusers(name, steps):
    make_scheduler, read_sigmas = CASES[name]
    scheduler = make_scheduler()
    noise = noise_for(steps)
    theirs = run_diffusers(scheduler, steps, noise)
    sigmas = read_sigmas(scheduler).float()
    assert sigmas.shape == (steps + 1,) and sigmas[-1] == 0
    ours = run_ours(name, sigmas, start(scheduler, sigmas, noise), scheduler.alphas_cumprod)
    assert relative_error(ours, theirs) < TOLERANCE


@pytest.mark.parametrize("schedule", ["karras", "exponential"])
def test_continuous_schedules_and_fractional_timesteps_match_diffusers_euler(schedule):
    """Karras and exponential sigmas are off the training grid: both sides interpolate the timestep
    in log sigma. (diffusers' multistep schedulers round those timesteps to integers for the model,
    a convention we do not follow: there the results differ by about 1e-4.)"""
    scheduler = diffusers.EulerDiscreteScheduler(**SD_BETAS, **{f"use_{schedule}_sigmas": True})
    noise = noise_for(15)
    theirs = run_diffusers(scheduler, 15, noise)
    model_sigmas = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod).sqrt()
    sigmas = get_sigmas(model_sigmas.float(), 15, schedule)
    torch.testing.assert_close(sigmas, scheduler.sigmas.float(), rtol=1e-5, atol=0)
    ours = run_ours("euler", sigmas, start(scheduler, sigmas, noise), scheduler.alphas_cumprod)
    assert relative_error(ours, theirs) < TOLERANCE
