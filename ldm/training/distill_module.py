"""DistillationModule: ``stage=distill`` in Lightning, distillation targets wired onto ``LatentDiffusion``.

One fit runs every phase of a distillation (``distillation_phases``), each a span of optimizer steps:

    stage 1 (distill.guidance_steps > 0)   the student learns its teacher's output at start_steps'
                                           timesteps: guided (Meng et al. 2023, stage 1: the CFG output
                                           for w ~ U[guidance_range], w an input) when distill.guidance
    round k                                the N-step student learns two DDIM steps of the 2N-step
                                           teacher per step (Salimans & Ho 2022), N halving each round

The teacher is frozen and kept out of the module's parameters and state dict; at the start of each
round the student becomes the next teacher (its EMA weights when the run keeps an EMA). So the state
dict, the checkpoints, resume, EMA, logging and sample grids are those of a stage-2 run; a checkpoint
also holds the teacher (``distillation_teacher``) and records in ``hyper_parameters`` what its student
was distilled for (``distillation``, and the matching ``sampler``), so that txt2img and ldm.eval
sample it as it was trained. At the end of each phase ``DistillationCheckpoints`` writes
``checkpoints/distill-N.ckpt``, N the student's steps, and a sample grid at N steps.

The formulas are in ``ldm.diffusion.distillation``; this module draws the batch's guidance scales,
builds the teacher and student calls, and switches phases.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from ldm.conditioning.concat import Context, as_conditioning
from ldm.config import DiffusionConfig, DistillConfig, TrainConfig, UNetConfig
from ldm.denoiser.unet import UNetModel
from ldm.diffusion.distillation import (
    distillation_sigmas,
    distillation_step_loss,
    guided_denoised,
    sample_guidance_scales,
)
from ldm.diffusion.latent_diffusion import LatentDiffusion
from ldm.diffusion.parametrization import DiscreteDenoiser
from ldm.diffusion.schedules import alphas_cumprod_from_config
from ldm.optim import lr_multiplier
from ldm.samplers.distilled import DistilledSampling
from ldm.samplers.noise import Generators
from ldm.samplers.sigmas import discrete_sigmas
from ldm.training.callbacks import SampleGridCallback
from ldm.training.diffusion_module import LatentDiffusionModule
from ldm.weights.checkpoint import load_latent_diffusion
from ldm.weights.io import check_state_dict

log = logging.getLogger(__name__)

TEACHER_KEY = "distillation_teacher"
"""The checkpoint entry with the current teacher: its phase, architecture, parametrisation and weights,
and the run's distill settings."""
TRAINING_FIELDS = (
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "lr_schedule",
    "ema",
    "ema_decay",
    "ema_warmup",
    "ema_power",
    "batch_size",
)
"""DiffusionConfig fields a distillation run takes from its own config; the rest (the schedule, the
latent scaling) are the teacher's."""
NEW_STUDENT_KEYS = ("model.diffusion_model.guidance_embed.", "model_ema.")
"""State-dict keys a student has and its teacher's checkpoint need not (the guidance embedding, an EMA)."""


@dataclass(frozen=True)
class Phase:
    """A span [begin, end) of optimizer steps training the student of `steps` sampling steps."""

    kind: str
    """stage1 (the teacher's output, one call, at start_steps' timesteps) or round (two DDIM steps of a
    2N-step teacher)."""
    steps: int
    begin: int
    end: int

    @property
    def checkpoint_name(self) -> str:
        return f"distill-{self.steps}.ckpt"


def distillation_phases(distill: DistillConfig) -> list[Phase]:
    """Stage 1 (when guidance_steps > 0), then one round per halving from start_steps to end_steps;
    raises when that leaves nothing to distil."""
    phases, step = [], 0
    if distill.guidance_steps > 0:
        phases.append(Phase("stage1", distill.start_steps, 0, distill.guidance_steps))
        step = distill.guidance_steps
    steps = distill.start_steps
    while steps > distill.end_steps:
        steps //= 2
        phases.append(Phase("round", steps, step, step + distill.steps_per_round))
        step += distill.steps_per_round
    if not phases:
        raise ValueError("nothing to distil: set distill.guidance_steps > 0 or start_steps > end_steps")
    return phases


def phase_index(phases: list[Phase], step: int) -> int:
    """The phase that optimizer step `step` belongs to (the last one from its end on)."""
    return next((i for i, phase in enumerate(phases) if step < phase.end), len(phases) - 1)


def phase_lr_multiplier(step: int, *, phases: tuple[Phase, ...], warmup_steps: int, schedule: str) -> float:
    """``lr_multiplier`` restarted in every phase: warm-up, then constant or a cosine decay to its end."""
    phase = phases[phase_index(list(phases), step)]
    return lr_multiplier(
        step - phase.begin, warmup_steps=warmup_steps, schedule=schedule, max_steps=phase.end - phase.begin
    )


@dataclass
class Teacher:
    """The frozen denoiser the student of phase `phase` learns from (not a submodule of the student's)."""

    denoiser: DiscreteDenoiser
    config: UNetConfig
    phase: int

    @classmethod
    def build(
        cls,
        config: UNetConfig,
        parameterization: str,
        alphas_cumprod: torch.Tensor,
        state: dict[str, torch.Tensor],
        phase: int,
    ) -> Teacher:
        """A frozen, eval-mode teacher of architecture `config` with the U-Net weights `state`."""
        denoiser = DiscreteDenoiser(UNetModel.from_config(config), alphas_cumprod, parameterization)
        denoiser.diffusion_model.load_state_dict(state, strict=True)
        return cls(denoiser.requires_grad_(False).eval(), config, phase)

    def state(self) -> dict[str, Any]:
        """Plain types and tensors, for a checkpoint."""
        return {
            "phase": self.phase,
            "denoiser": dataclasses.asdict(self.config),
            "parameterization": self.denoiser.parameterization,
            "state_dict": self.denoiser.diffusion_model.state_dict(),
        }


def student_diffusion(
    teacher: DiffusionConfig, run: DiffusionConfig, parameterization: str, **fields: Any
) -> DiffusionConfig:
    """The teacher's schedule and latent scaling with the run's optimisation settings and the student's
    parametrisation."""
    return dataclasses.replace(
        teacher, **{k: getattr(run, k) for k in TRAINING_FIELDS}, parameterization=parameterization, **fields
    )


class DistillationModule(LatentDiffusionModule):
    """Distils a trained text-conditioned U-Net into students of ever fewer sampling steps."""

    def __init__(self, *, distill: DistillConfig, teacher: Optional[Teacher] = None, **configs: Any):
        super().__init__(**configs)
        self.distill = distill
        self.phases = distillation_phases(distill)
        self.teacher = teacher
        self.phase = teacher.phase if teacher is not None else 0

    @classmethod
    def from_teacher(cls, path: str | Path, config: TrainConfig) -> DistillationModule:
        """A student built from the stage-2 checkpoint at `path` (its EMA weights when it kept an EMA),
        with that checkpoint's U-Net as the first teacher."""
        teacher = load_latent_diffusion(path)
        if teacher.distillation is not None:
            raise ValueError(
                f"{path} is already a distilled student; to distil further, resume its run with a smaller "
                "distill.end_steps"
            )
        configs = LatentDiffusion.configs_from_hparams(teacher.checkpoint_hparams)
        distill = config.distill
        teacher_unet = configs["denoiser"]
        embed = (config.denoiser.guidance_embed_dim or teacher_unet.model_channels) if distill.guidance else 0
        phases = distillation_phases(distill)
        configs.update(
            denoiser=dataclasses.replace(teacher_unet, guidance_embed_dim=embed),
            conditioner=dataclasses.replace(
                configs["conditioner"], trainable=False
            ),  # the teacher's contexts
            diffusion=student_diffusion(
                configs["diffusion"],
                config.diffusion,
                distill.parameterization,
                init_from=str(path),
                max_steps=phases[-1].end,
            ),
        )
        first = _distilled_sampling(distill, phases[0], configs["diffusion"])
        configs.update(sampler=first.sampler(configs["sampler"]), distillation=first)
        module = cls(distill=distill, **configs)
        state = teacher.state_dict()
        expected = {k: v.shape for k, v in module.state_dict().items() if not k.startswith(NEW_STUDENT_KEYS)}
        check_state_dict(state, expected, f"the weights of {path} do not fit the student built from them")
        module.load_state_dict(state, strict=False)
        if module.model_ema is not None:
            module.model_ema.reset(module.model.diffusion_model)
        module.teacher = Teacher(teacher.model.requires_grad_(False).eval(), teacher_unet, phase=0)
        return module

    @classmethod
    def from_resume(cls, hparams: dict[str, Any], config: TrainConfig) -> DistillationModule:
        """The networks of a distillation checkpoint's hyper_parameters, with the run's optimisation
        settings; weights and teacher come from the checkpoint when the fit resumes."""
        configs = LatentDiffusion.configs_from_hparams(hparams)
        saved = configs["diffusion"]
        if saved.parameterization != config.distill.parameterization:
            raise ValueError(
                f"the checkpoint's students predict {saved.parameterization}; a resumed run cannot change "
                f"that (distill.parameterization={config.distill.parameterization})"
            )
        end = distillation_phases(config.distill)[-1].end
        configs["diffusion"] = student_diffusion(
            saved, config.diffusion, saved.parameterization, max_steps=end
        )
        return cls(distill=config.distill, **configs)

    # -- phases ------------------------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole distillation."""
        return self.phases[-1].end

    def enter_phase(self, index: int) -> None:
        """Make phase `index` current: at a new round the student becomes the teacher (its EMA weights
        when kept, which the student then continues from); sampling follows the new student's steps."""
        if self.teacher is None:
            raise RuntimeError(
                "the distillation module has no teacher (built without from_teacher or a checkpoint)"
            )
        if index > self.teacher.phase:
            if self.model_ema is not None:
                self.model_ema.copy_to(self.model.diffusion_model)
                self.model_ema.reset(self.model.diffusion_model)
            denoiser_config = UNetConfig(**self.checkpoint_hparams["denoiser"])
            self.teacher = Teacher.build(
                denoiser_config,
                self.diffusion_config.parameterization,
                alphas_cumprod_from_config(self.diffusion_config),
                self.model.diffusion_model.state_dict(),
                index,
            )
        self.teacher.denoiser.to(self.device)
        self.phase = index
        phase = self.phases[index]
        self.distillation = _distilled_sampling(self.distill, phase, self.diffusion_config)
        self.sampler_config = self.distillation.sampler(self.sampler_config)
        log.info(
            "distillation phase %d/%d (%s, steps %d-%d): a %d-step student%s",
            index + 1,
            len(self.phases),
            phase.kind,
            phase.begin,
            phase.end,
            phase.steps,
            "" if phase.kind == "stage1" else f" from the {2 * phase.steps}-step teacher",
        )

    def on_fit_start(self) -> None:
        # The teacher's phase: a resumed fit restores its global step only after this hook.
        self.enter_phase(self.phase)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        index = phase_index(self.phases, self.global_step)
        if index != self.phase:
            self.enter_phase(index)

    # -- the loss ----------------------------------------------------------------------------------

    def sigma_grids(self, phase: Phase) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(student sigmas [N + 1], teacher sigmas [2N + 1] or None in stage 1) of `phase`."""
        if phase.kind == "stage1":
            return discrete_sigmas(self.model.sigmas, phase.steps, "trailing"), None
        return distillation_sigmas(self.model.sigmas, phase.steps)

    def loss(self, batch: dict[str, Any], *, train: bool, generator: Generators = None) -> torch.Tensor:
        """The distillation loss of a batch in the current phase (``distillation_step_loss``): fresh
        posterior samples when `train`; caption dropout too when guidance is not distilled."""
        guided = self.distill.guidance
        z0 = self.latents_of(batch, sample=train, generator=generator)
        context = self.conditioning_of(batch, drop=train and not guided, generator=generator)
        scale = (
            sample_guidance_scales(z0.shape[0], self.distill.guidance_range, z0.device, generator)
            if guided
            else None
        )
        student_sigmas, teacher_sigmas = self.sigma_grids(self.phases[self.phase])
        return distillation_step_loss(
            partial(self.model, context=context, guidance=scale),
            self.teacher_call(context, scale),
            z0,
            student_sigmas,
            teacher_sigmas,
            self.diffusion_config.parameterization,
            self.distill.loss_weighting,
            generator,
        )

    def teacher_call(
        self, context: Context, scale: Optional[torch.Tensor]
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """D(x, sigma) of the teacher for these contexts (with an image-conditioned model's image): guided
        at `scale` (one call with w as input, or a batched CFG call for a teacher without it, the image in
        both branches), or plain when guidance is not distilled."""
        teacher = self.teacher.denoiser
        if scale is None:
            return partial(teacher, context=context)
        if self.teacher.config.guidance_embed_dim:
            return partial(teacher, context=context, guidance=scale)
        batch = as_conditioning(context).context.shape[0]
        uncond = self.empty_context().expand(batch, -1, -1)  # [B, tokens, width]
        return partial(guided_denoised, teacher, context=context, uncond_context=uncond, scale=scale)

    # -- optimisation and checkpoints --------------------------------------------------------------

    def lr_schedule(self) -> Callable[[int], float]:
        """The learning-rate multiplier per optimizer step: warm-up and decay restart in every phase."""
        cfg = self.diffusion_config
        return partial(
            phase_lr_multiplier,
            phases=tuple(self.phases),
            warmup_steps=cfg.warmup_steps,
            schedule=cfg.lr_schedule,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["hyper_parameters"] = {
            **checkpoint.get("hyper_parameters", self.checkpoint_hparams),
            "sampler": dataclasses.asdict(self.sampler_config),
            "distillation": self.distillation.as_dict(),
        }
        checkpoint[TEACHER_KEY] = {**self.teacher.state(), "distill": dataclasses.asdict(self.distill)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(TEACHER_KEY)
        if state is None:
            raise ValueError("the checkpoint holds no distillation teacher: it is not a distillation run's")
        phase = state["phase"]
        done = distillation_phases(DistillConfig(**state["distill"]))[: phase + 1]
        if self.phases[: phase + 1] != done:
            raise ValueError(
                f"the distill settings change the phases this run has already gone through ({done}); "
                "only distill.end_steps may be lowered when resuming"
            )
        self.teacher = Teacher.build(
            UNetConfig(**state["denoiser"]),
            state["parameterization"],
            alphas_cumprod_from_config(self.diffusion_config),
            state["state_dict"],
            phase,
        )
        self.phase = phase


def _distilled_sampling(
    distill: DistillConfig, phase: Phase, diffusion: DiffusionConfig
) -> DistilledSampling:
    """What the student of `phase` is distilled for (its checkpoint's ``distillation`` entry)."""
    return DistilledSampling(
        steps=phase.steps,
        guidance_range=tuple(float(v) for v in distill.guidance_range) if distill.guidance else None,
        parameterization=diffusion.parameterization,
        teacher=diffusion.init_from,
    )


class DistillationCheckpoints(pl.Callback):
    """At the end of each phase, writes ``<dirpath>/distill-N.ckpt`` (N: the student's sampling steps; the
    full state, to resume from) and, with `grids`, a sample grid at N steps."""

    def __init__(self, dirpath: str | Path, phases: list[Phase], grids: Optional[SampleGridCallback] = None):
        self.dirpath = Path(dirpath)
        self.ends = {phase.end: phase for phase in phases}
        self.grids = grids
        self._written_at = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step not in self.ends or step == self._written_at:  # once per step (gradient accumulation)
            return
        self._written_at = step
        path = self.dirpath / self.ends[step].checkpoint_name
        trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            log.info("distilled the %d-step student: %s", self.ends[step].steps, path)
        if self.grids is not None:
            self.grids.log_grid(trainer, pl_module)
