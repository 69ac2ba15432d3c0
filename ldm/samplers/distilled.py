"""Sampling a distilled student: its step count, its sampler, and guidance as a network input.

A checkpoint written by ``stage=distill`` records in ``hyper_parameters["distillation"]`` what its
student was trained for (``DistilledSampling``): the number of deterministic DDIM steps on the trailing
discrete timesteps of its schedule, and, when guidance was distilled (Meng et al. 2023), the range of
guidance scales it takes as an input. Such a student is sampled with exactly that sampler; its
guidance scale is fed to the network (``GuidanceInputDenoiser``: one call per step, no unconditional
branch) instead of classifier-free guidance's two.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ldm.config import SamplerConfig

log = logging.getLogger(__name__)

DISTILLED_SAMPLER = {"name": "ddim", "schedule": "discrete", "spacing": "trailing"}
"""The sampler every distilled student was trained for (with eta 0 and its own step count)."""


@dataclass(frozen=True)
class DistilledSampling:
    """What a distilled student was trained for (a checkpoint's ``hyper_parameters["distillation"]``)."""

    steps: int
    """Deterministic DDIM steps (trailing discrete timesteps) the student was distilled for."""
    guidance_range: Optional[tuple[float, float]]
    """[low, high] of the guidance scales it takes as input; None: guidance not distilled (CFG applies)."""
    parameterization: str
    """What the student predicts: eps, v or x0."""
    teacher: Optional[str] = None
    """The stage-2 checkpoint the distillation started from."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DistilledSampling:
        """From the plain dict a checkpoint stores."""
        values = dict(values)
        if values.get("guidance_range") is not None:
            values["guidance_range"] = tuple(float(v) for v in values["guidance_range"])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """Plain types only, for ``torch.load(weights_only=True)``."""
        values = dataclasses.asdict(self)
        if self.guidance_range is not None:
            values["guidance_range"] = list(self.guidance_range)
        return values

    @property
    def guided(self) -> bool:
        """Whether the guidance scale is a network input."""
        return self.guidance_range is not None

    def sampler(self, base: SamplerConfig) -> SamplerConfig:
        """`base` (its guidance scale kept) as the sampler this student was distilled for."""
        return dataclasses.replace(
            base, **DISTILLED_SAMPLER, steps=self.steps, eta=0.0, guidance_rescale=0.0, guidance_interval=None
        )

    def check_request(self, sampler: SamplerConfig, negative_prompt: str = "") -> None:
        """Raise a one-line error for a sampler this student was not distilled for."""
        if sampler.steps != self.steps:
            raise ValueError(
                f"this checkpoint was distilled for {self.steps} sampling steps, not {sampler.steps}: "
                f"sample it with {self.steps} (the default) or take the checkpoint of another round"
            )
        wanted = {**DISTILLED_SAMPLER, "eta": 0.0}
        got = {k: getattr(sampler, k) for k in wanted}
        got["eta"] = got["eta"] or 0.0  # None: DDIM's default, 0
        if got != wanted:
            differing = ", ".join(f"{k}={got[k]}" for k in wanted if got[k] != wanted[k])
            raise ValueError(
                "this checkpoint was distilled for deterministic DDIM on trailing discrete timesteps; "
                f"got {differing}"
            )
        if self.guided and sampler.guidance_rescale != 0:
            raise ValueError(
                "guidance rescale does not apply to a guidance-distilled checkpoint (no CFG branches)"
            )
        if self.guided and sampler.guidance_interval is not None:
            raise ValueError(
                "a guidance interval does not apply to a guidance-distilled checkpoint (no CFG branches)"
            )
        if self.guided and negative_prompt:
            raise ValueError(
                "a guidance-distilled checkpoint has no unconditional branch: negative prompts do not apply"
            )
        if self.guided and not self.guidance_range[0] <= sampler.guidance_scale <= self.guidance_range[1]:
            low, high = self.guidance_range
            log.warning(
                "guidance scale %g is outside the range %g-%g this checkpoint was distilled for",
                sampler.guidance_scale,
                low,
                high,
            )


class GuidanceInputDenoiser:
    """A guidance-distilled denoiser D(x, sigma, context, guidance) with CFGDenoiser's call signature:
    the scale is the network's input, the unconditional context is not used (one call per step)."""

    def __init__(self, denoiser: Callable[..., torch.Tensor], guidance_scale: float):
        if guidance_scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {guidance_scale}")
        self.denoiser = denoiser
        self.guidance_scale = guidance_scale

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor,
        uncond_context: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The student's denoised estimate at this guidance scale."""
        guidance = torch.full_like(sigma, self.guidance_scale, dtype=torch.float32)  # [B]
        return self.denoiser(x, sigma, context, guidance=guidance)
