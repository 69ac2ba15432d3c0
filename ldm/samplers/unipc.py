"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"), the data-prediction variant, in sigma form.

Like DPM-Solver++, UniPC integrates in lambda = -log(sigma) with the data prediction D. Over a step
h = lambda_next - lambda from the newest point (value m0 = D there), with earlier points at
relative positions r_k = (lambda_k - lambda) / h and divided differences D_k = (m_k - m0) / r_k,

    x_next = (sigma_next / sigma) x - (e^-h - 1) m0 - B(h) sum_k a_k D_k,

where B(h) is h (variant bh1) or e^h - 1 (bh2), here with h -> -h for data prediction. The
coefficients a solve R a = g with R_jk = r_k^(j-1) and g_j = h phi_(j+1)(h) j! / B(h), the
phi-functions phi_1(h) = (e^h - 1) / h, phi_(j+1)(h) = (phi_j(h) - 1/j!) / h (the paper's UniP-p,
order p, and UniC-p; as in the authors' code, the one-coefficient systems use a = 1/2, the h -> 0
limit of g_1).

The predictor UniP-p takes the step with p - 1 earlier points. After the model is evaluated at the
predicted point, the corrector UniC-p recomputes the same step with that new value as one more point
(r = 1), raising the order by one at no extra evaluation; the next step starts from the corrected x
but reuses the model value at the predicted one. One evaluation per step; the first steps use lower
orders (there is no history yet) and, as in diffusers, so does the last (to sigma = 0, which returns
the denoised estimate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

from ldm.samplers.noise import Generators

VARIANTS = ("bh1", "bh2")


def unipc_step(
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    denoised: Sequence[torch.Tensor],
    lambdas: Sequence[float],
    order: int,
    variant: str = "bh2",
    denoised_next: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One UniP-`order` step from the newest history point (sigma) to sigma_next, or, given the model's
    value at sigma_next, the UniC-`order` correction of that step. `denoised` and `lambdas` hold the
    history, newest last."""
    lam, m0 = lambdas[-1], denoised[-1]
    h = -math.log(sigma_next) - lam
    hh = -h  # data prediction
    rks, diffs = [], []
    for k in range(1, order):
        r = (lambdas[-(k + 1)] - lam) / h
        rks.append(r)
        diffs.append((denoised[-(k + 1)] - m0) / r)
    rks.append(1.0)
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    g, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1
    for j in range(1, order + 1):
        g.append(h_phi_k * factorial / b_h)  # g_j = hh phi_(j+1)(hh) j! / B(h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    rows = torch.tensor([[r ** (j - 1) for r in rks] for j in range(1, order + 1)], dtype=torch.float64)
    rhs = torch.tensor(g, dtype=torch.float64)

    x_next = (sigma_next / sigma) * x - h_phi_1 * m0
    if denoised_next is None:  # UniP: a from the (order - 1) x (order - 1) system
        if order == 1:
            return x_next
        rhos = [0.5] if order == 2 else torch.linalg.solve(rows[:-1, :-1], rhs[:-1]).tolist()
        return x_next - b_h * sum(rho * d for rho, d in zip(rhos, diffs))
    # UniC: the full system, the new point entering with r = 1
    rhos = [0.5] if order == 1 else torch.linalg.solve(rows, rhs).tolist()
    correction = sum((rho * d for rho, d in zip(rhos[:-1], diffs)), torch.zeros_like(m0))
    return x_next - b_h * (correction + rhos[-1] * (denoised_next - m0))


@torch.no_grad()
def sample_unipc(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    extra_args: Optional[dict[str, Any]] = None,
    callback: Optional[Callable[[dict[str, Any]], None]] = None,
    generator: Generators = None,
    order: int = 2,
    variant: str = "bh2",
    use_corrector: bool = True,
) -> torch.Tensor:
    """UniPC: the UniP-`order` predictor with the UniC corrector, one model evaluation per step."""
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniPC variant '{variant}'; available: {', '.join(VARIANTS)}")
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    steps = len(sigmas) - 1
    history: list[torch.Tensor] = []
    lambdas: list[float] = []
    x_start, last_order = x, 1
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigmas[i] * ones, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": denoised})
        if sigma_next == 0:
            x = denoised  # a correction here would not change the result
            continue
        if use_corrector and history:
            # UniC: redo the last step from x_start with the value at its end point.
            x = unipc_step(
                x_start, float(sigmas[i - 1]), sigma, history, lambdas, last_order, variant, denoised
            )
        history = [*history[-(order - 1) :], denoised] if order > 1 else [denoised]
        lambdas = [*lambdas[-(order - 1) :], -math.log(sigma)] if order > 1 else [-math.log(sigma)]
        # Warm-up while the history is short, and the lower order at the end, as in diffusers.
        last_order = min(order, len(history), steps - i)
        x_start = x
        x = unipc_step(x, sigma, sigma_next, history, lambdas, last_order, variant)
    return x
