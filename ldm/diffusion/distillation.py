"""Distillation targets: progressive (Salimans & Ho 2022) and guided distillation (Meng et al. 2023).

Progressive distillation trains a student to do in one deterministic DDIM step what its teacher does in
two: from z_t at a student timestep t the teacher steps to the midpoint t' and on to the student's next
timestep t'', all on the model's own discrete schedule (the teacher's 2N-step grid contains the
student's N-step grid). In the variance-preserving notation of the paper, z = alpha x + sigma eps, the
one-step DDIM from z to z'' with denoised estimate x is z'' = alpha'' x + sigma'' (z - alpha x) / sigma,
so the student's x-target is (Salimans & Ho 2022, Algorithm 2)

    x~ = (z'' - (sigma''/sigma) z) / (alpha'' - (sigma''/sigma) alpha).

The samplers here work in the variance-exploding form y = z / alpha = x + s eps with s = sigma / alpha
(``ldm.diffusion.parametrization``); dividing numerator and denominator by alpha'' gives the same target
there, x~ = (y'' - (s''/s) y) / (1 - s''/s), and the DDIM step y' = D + s' (y - D) / s of
``ldm.samplers.ddim``. At the last student step s'' = 0 and x~ is the teacher's second denoised estimate.

The student may predict eps, v or x0 whatever its teacher predicted: the target in its parametrisation
is whatever output its preconditioning (c_skip, c_out) maps to x~. With v or x0 that output stays
bounded at low SNR; eps must be divided by sigma there (Salimans & Ho 2022, Sec. 4), and is undefined
at SNR 0. A teacher trained on a zero-terminal-SNR schedule (v or x0) is distilled on that schedule as
it is: its last timestep takes the finite stand-in of ``finite_alphas_cumprod``, as its samplers do.
Distillation never changes the schedule: a student of an eps teacher on SD's schedule cannot be moved
to zero terminal SNR, since the teacher has nothing to say at SNR 0.

Guided distillation (Meng et al. 2023, stage 1) regresses the teacher's classifier-free-guided output
D_u + w (D_c - D_u) (Ho & Salimans 2022) for guidance scales w drawn from a range, given w as an input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch

from ldm.conditioning.concat import Context, guidance_batch
from ldm.diffusion.objective import sample_timesteps
from ldm.diffusion.parametrization import check_parameterization, preconditioning
from ldm.samplers.noise import Generators, randn_like
from ldm.samplers.sigmas import discrete_sigmas

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""D(x, sigma) -> x0 estimate, with x = x0 + sigma * noise and sigma of shape [B]."""
DISTILLATION_WEIGHTINGS = ("truncated_snr", "uniform")
"""truncated_snr: max(SNR, 1) on the x error (Salimans & Ho 2022, Sec. 4); uniform: the plain MSE of the
network's own output (eps, v or x0)."""


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *[1] * (like.ndim - 1))  # [B] -> [B, 1, ...], broadcast over C, H, W


def ddim_step(
    x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM step (eta 0) per sample, sigma form: x' = D + sigma' (x - D) / sigma."""
    return denoised + _per_sample(sigma_next, x) * (x - denoised) / _per_sample(sigma, x)


def two_step_ddim(
    teacher: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_mid: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """The teacher's two deterministic DDIM steps sigma -> sigma_mid -> sigma_next (each [B])."""
    x_mid = ddim_step(x, teacher(x, sigma), sigma, sigma_mid)
    return ddim_step(x_mid, teacher(x_mid, sigma_mid), sigma_mid, sigma_next)


def one_step_target(
    x: torch.Tensor, x_next: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """The denoised estimate whose single DDIM step from (x, sigma) lands on x_next at sigma_next:
    x~ = (x'' - (s''/s) x) / (1 - s''/s), Algorithm 2 of Salimans & Ho 2022 in sigma form."""
    ratio = _per_sample(sigma_next / sigma, x)
    return (x_next - ratio * x) / (1 - ratio)


def progressive_distillation_target(
    teacher: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_mid: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """The student's x-target at (x, sigma): one DDIM step of it equals two of the teacher's."""
    return one_step_target(x, two_step_ddim(teacher, x, sigma, sigma_mid, sigma_next), sigma, sigma_next)


def guided_denoised(
    denoiser: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigma: torch.Tensor,
    context: Context,
    uncond_context: Context,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Classifier-free guidance with a scale per sample: D_u + w (D_c - D_u), one batched call of
    D(x, sigma, context); the target of guided distillation (Meng et al. 2023, stage 1). An image
    conditioning of `context` goes to both branches (``guidance_batch``)."""
    both = guidance_batch(uncond_context, context)
    out = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), both)
    uncond, cond = out.chunk(2)  # [2B, ...]: unconditional first
    return uncond + _per_sample(scale.to(out.dtype), out) * (cond - uncond)


def network_target(
    denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, parameterization: str
) -> torch.Tensor:
    """What a network predicting `parameterization` must output at (x, sigma) for its wrapper
    D = c_skip x + c_out F to return `denoised`: F = (D - c_skip x) / c_out (eps, v or x0)."""
    c_skip, c_out, _ = (_per_sample(c, x) for c in preconditioning(sigma, parameterization))
    return (denoised - c_skip * x) / c_out


def check_distillation_weighting(weighting: str) -> None:
    """Raise a clear error for an unknown distillation loss weighting."""
    if weighting not in DISTILLATION_WEIGHTINGS:
        raise ValueError(
            f"unknown distillation loss weighting '{weighting}'; "
            f"available: {', '.join(DISTILLATION_WEIGHTINGS)}"
        )


def loss_weights(
    sigma: torch.Tensor, parameterization: str, weighting: str = "truncated_snr"
) -> torch.Tensor:
    """Per-sample weights [B] on the squared error of the denoised estimate, ||D - x~||^2.

    An error F - F~ of the network's output is an error c_out (F - F~) of D, so the plain MSE of the
    network's output is ||D - x~||^2 / c_out^2 ("uniform"). Truncated SNR weighting is
    max(||x - x~||^2 SNR, ||x - x~||^2) = max(SNR, 1) ||x - x~||^2 with SNR = 1 / sigma^2 (Salimans &
    Ho 2022, Sec. 4); on v's output that is max(SNR, 1) / (SNR + 1) times its MSE.
    """
    check_parameterization(parameterization)
    check_distillation_weighting(weighting)
    if weighting == "truncated_snr":
        return sigma.pow(-2).clamp(min=1.0)
    _, c_out, _ = preconditioning(sigma, parameterization)
    return c_out.pow(-2)


def distillation_loss(
    denoised: torch.Tensor,
    target: torch.Tensor,
    sigma: torch.Tensor,
    parameterization: str,
    weighting: str = "truncated_snr",
) -> torch.Tensor:
    """Mean over the batch of the weighted mean squared error between the student's denoised estimate
    and the target (``loss_weights``), in float32 at least (bf16 outputs are widened)."""
    dtype = torch.promote_types(torch.promote_types(denoised.dtype, target.dtype), torch.float32)
    per_sample = (denoised.to(dtype) - target.to(dtype)).pow(2).flatten(1).mean(dim=1)  # [B]
    return (loss_weights(sigma.to(dtype), parameterization, weighting) * per_sample).mean()


def distillation_sigmas(model_sigmas: torch.Tensor, student_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(student [N + 1], teacher [2N + 1]) descending sigmas of the trailing discrete timesteps (the grids
    ``discrete_sigmas`` gives the samplers), each ending at 0; every other teacher sigma is a student's."""
    student = discrete_sigmas(model_sigmas, student_steps, "trailing")
    teacher = discrete_sigmas(model_sigmas, 2 * student_steps, "trailing")
    if not torch.equal(teacher[::2], student):
        raise ValueError(
            f"the {2 * student_steps}-step timesteps do not contain the {student_steps}-step ones on this "
            f"{model_sigmas.shape[0]}-step schedule; choose step counts that divide it more evenly"
        )
    return student, teacher


def sample_guidance_scales(
    n: int, guidance_range: Sequence[float], device: torch.device, generator: Generators = None
) -> torch.Tensor:
    """w ~ U[low, high] for n samples (one generator for all, or one per sample), float32 on `device`."""
    low, high = (float(v) for v in guidance_range)
    if generator is None or isinstance(generator, torch.Generator):
        where = device if generator is None else generator.device
        u = torch.rand(n, device=where, generator=generator)
    else:
        if len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for a batch of {n} samples")
        u = torch.stack([torch.rand((), device=g.device, generator=g) for g in generator])
    return (low + (high - low) * u).to(device)


def distillation_step_loss(
    student: Denoiser,
    teacher: Denoiser,
    z0: torch.Tensor,
    student_sigmas: torch.Tensor,
    teacher_sigmas: Optional[torch.Tensor],
    parameterization: str,
    weighting: str = "truncated_snr",
    generator: Generators = None,
) -> torch.Tensor:
    """The distillation loss on clean latents z0: a student timestep per sample (uniform over the
    N = len(student_sigmas) - 1 steps), x = z0 + sigma noise, and the target x~ of two teacher DDIM steps
    on `teacher_sigmas` ([2N + 1]), or with `teacher_sigmas` None the teacher's own output (guided
    distillation); the student regresses it through ``distillation_loss``."""
    index = sample_timesteps(z0.shape[0], student_sigmas.shape[0] - 1, z0.device, generator)  # [B]
    sigma = student_sigmas[index]
    x = z0 + _per_sample(sigma, z0) * randn_like(z0, generator)
    with torch.no_grad():
        if teacher_sigmas is None:
            target = teacher(x, sigma)
        else:
            sigma_mid, sigma_next = teacher_sigmas[2 * index + 1], student_sigmas[index + 1]
            target = progressive_distillation_target(teacher, x, sigma, sigma_mid, sigma_next)
    return distillation_loss(student(x, sigma), target, sigma, parameterization, weighting)
