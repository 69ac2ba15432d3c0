"""Impossible training settings fail at start-up, in one line naming the key and the rule.

``python -m ldm.train`` calls :func:`check_config` before it builds, generates or downloads
anything, so that a negative step count or an unknown sampler is reported in a second instead of
after a stage has trained. The messages read ``config: <key> <rule> (got <value>)``.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from typing import Any, Optional

from lightning_fabric.connector import _PRECISION_INPUT_STR

from ldm.autoencoder.discriminator import DISC_NORMS
from ldm.autoencoder.losses import DISC_LOSSES, RECONSTRUCTION_LOSSES
from ldm.conditioning.image import check_image_conditioning
from ldm.conditioning.text import LAYERS
from ldm.config import AutoencoderConfig, TrainConfig
from ldm.data.compose import ComposeRules
from ldm.data.decode import CROPS
from ldm.data.shards import DATA_SETS
from ldm.denoiser.attention import ATTENTION_BACKENDS
from ldm.diffusion.channel_normalization import LATENT_NORMALIZATIONS
from ldm.diffusion.distillation import DISTILLATION_WEIGHTINGS
from ldm.diffusion.ema import EMA_WARMUPS
from ldm.diffusion.parametrization import PARAMETERIZATIONS
from ldm.diffusion.schedules import BETA_SCHEDULES
from ldm.diffusion.weighting import LOSS_WEIGHTINGS
from ldm.optim import LR_SCHEDULES
from ldm.samplers import SAMPLERS
from ldm.samplers.guidance import check_guidance_interval
from ldm.samplers.sigmas import SCHEDULES, SPACINGS
from ldm.training.precision import resolve_precision, uses_cuda
from ldm.training.throughput import check_window

STAGES = ("all", "autoencoder", "diffusion", "distill")
STRATEGIES = ("auto", "ddp", "fsdp")
FSDP_SHARDINGS = ("full", "grad_op")
LOGGERS = ("csv", "wandb", "tensorboard")
PRECISIONS = ("auto", *typing.get_args(_PRECISION_INPUT_STR))
"""``auto`` (ours) and the precision strings Lightning accepts."""


class ConfigError(ValueError):
    """A config value that no run can use."""


def _fail(key: str, rule: str, value: Any) -> None:
    raise ConfigError(f"config: {key} {rule} (got {value!r})")


def _at_least(key: str, value: Optional[float], bound: float, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or value < bound:
        _fail(key, f"must be >= {bound:g}", value)


def _positive(key: str, value: Optional[float], *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or not value > 0:
        _fail(key, "must be > 0", value)


def _within(key: str, value: float, low: float, high: float, *, high_open: bool = False) -> None:
    if not (low <= value < high if high_open else low <= value <= high):
        _fail(key, f"must be in [{low:g}, {high:g}{')' if high_open else ']'}", value)


def _one_of(key: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        _fail(key, f"must be one of {', '.join(allowed)}", value)


def _check_fsdp(config: TrainConfig) -> None:
    """What FSDP cannot do yet: keep an EMA; mixed precision off CUDA (Lightning autocasts on CUDA only)."""
    t = config.trainer
    if t.strategy != "fsdp" or config.stage in ("autoencoder", "distill"):  # those stages run under DDP
        return
    if config.diffusion.ema:
        _fail("diffusion.ema", "must be false under trainer.strategy=fsdp (no sharded EMA yet; or use ddp)", True)
    precision = resolve_precision(t.precision, t.accelerator)
    if "mixed" in precision and not uses_cuda(t.accelerator):
        _fail("trainer.precision", "under trainer.strategy=fsdp must be 32-true off CUDA", precision)


def downsample_factor(autoencoder: AutoencoderConfig) -> int:
    """The autoencoder's spatial factor f = 2 ** (levels - 1)."""
    return 2 ** (len(autoencoder.ch_mult) - 1)


def check_config(config: TrainConfig, autoencoder: Optional[AutoencoderConfig] = None) -> None:
    """Raise ConfigError for the first impossible value; `autoencoder` is the architecture that
    stage 2 will use when it comes from a checkpoint (default: the config's)."""
    _one_of("stage", config.stage, STAGES)
    ae, diffusion, data, sampler = config.autoencoder, config.diffusion, config.data, config.sampler
    _at_least("autoencoder.max_steps", ae.max_steps, 1)
    _at_least("autoencoder.batch_size", ae.batch_size, 1, optional=True)
    _positive("autoencoder.learning_rate", ae.learning_rate)
    _positive("autoencoder.gradient_clip_val", ae.gradient_clip_val, optional=True)
    _one_of("autoencoder.reconstruction", ae.reconstruction, RECONSTRUCTION_LOSSES)
    _one_of("autoencoder.lr_schedule", ae.lr_schedule, LR_SCHEDULES)
    _one_of("autoencoder.disc_loss", ae.disc_loss, DISC_LOSSES)
    _one_of("autoencoder.disc_norm", ae.disc_norm, DISC_NORMS)
    _at_least("autoencoder.latent_stats_batches", ae.latent_stats_batches, 0)
    _one_of("denoiser.attention_backend", config.denoiser.attention_backend, ATTENTION_BACKENDS)
    _one_of("conditioner.layer", config.conditioner.layer, LAYERS)
    _within("conditioner.caption_dropout", config.conditioner.caption_dropout, 0, 1, high_open=True)
    _positive("conditioner.learning_rate", config.conditioner.learning_rate, optional=True)
    _at_least("diffusion.max_steps", diffusion.max_steps, 1)
    _at_least("diffusion.batch_size", diffusion.batch_size, 1, optional=True)
    _positive("diffusion.learning_rate", diffusion.learning_rate)
    _at_least("diffusion.warmup_steps", diffusion.warmup_steps, 0)
    _at_least("diffusion.weight_decay", diffusion.weight_decay, 0)
    _at_least("diffusion.num_timesteps", diffusion.num_timesteps, 2)
    _at_least("diffusion.scale_batches", diffusion.scale_batches, 1)
    _positive("diffusion.scale_factor", diffusion.scale_factor, optional=True)
    _one_of("diffusion.latent_normalization", diffusion.latent_normalization, LATENT_NORMALIZATIONS)
    if diffusion.latent_normalization == "channel" and diffusion.scale_factor is not None:
        _fail("diffusion.scale_factor", "applies to latent_normalization=scale (channel: unit variance per channel)",
              diffusion.scale_factor)
    _within("diffusion.ema_decay", diffusion.ema_decay, 0, 1)
    _at_least("diffusion.offset_noise", diffusion.offset_noise, 0)
    _one_of("diffusion.lr_schedule", diffusion.lr_schedule, LR_SCHEDULES)
    _one_of("diffusion.beta_schedule", diffusion.beta_schedule, BETA_SCHEDULES)
    _one_of("diffusion.parameterization", diffusion.parameterization, PARAMETERIZATIONS)
    _one_of("diffusion.loss_weighting", diffusion.loss_weighting, LOSS_WEIGHTINGS)
    _one_of("diffusion.ema_warmup", diffusion.ema_warmup, EMA_WARMUPS)
    _one_of("sampler.name", sampler.name, SAMPLERS)
    _at_least("sampler.steps", sampler.steps, 1)
    _at_least("sampler.guidance_scale", sampler.guidance_scale, 0)
    _within("sampler.guidance_rescale", sampler.guidance_rescale, 0, 1)
    try:
        check_guidance_interval(sampler.guidance_interval)
    except ValueError as error:
        raise ConfigError(f"config: sampler.guidance_interval: {error}") from None
    _at_least("sampler.eta", sampler.eta, 0, optional=True)
    _one_of("sampler.schedule", sampler.schedule, SCHEDULES)
    _one_of("sampler.spacing", sampler.spacing, SPACINGS)
    _one_of("data.name", data.name, DATA_SETS)
    if data.name == "shapes_compose":
        try:
            ComposeRules.from_config(data.compose)
        except ValueError as error:
            raise ConfigError(f"config: {error}") from None
    _one_of("data.crop", data.crop, CROPS)
    _at_least("data.batch_size", data.batch_size, 1)
    _at_least("data.num_workers", data.num_workers, 0)
    _at_least("data.prefetch_factor", data.prefetch_factor, 1)
    _at_least("data.resolution", data.resolution, 1)
    _at_least("data.shuffle_buffer", data.shuffle_buffer, 1)
    _within("data.max_skip_fraction", data.max_skip_fraction, 0, 1)
    if data.max_skip_fraction == 0:
        _fail("data.max_skip_fraction", "must be in (0, 1]", data.max_skip_fraction)
    f = downsample_factor(autoencoder or ae)
    if data.resolution % f:
        _fail("data.resolution", f"must be divisible by the autoencoder's factor {f}", data.resolution)
    try:
        check_image_conditioning(config.image_conditioning, config.denoiser, autoencoder or ae)
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    if config.image_conditioning.task != "none" and data.cached_latents:
        _fail("data.cached_latents", "cannot train image_conditioning (it is built from the images)", True)
    _one_of("trainer.precision", config.trainer.precision, PRECISIONS)
    _one_of("trainer.strategy", config.trainer.strategy, STRATEGIES)
    _one_of("trainer.fsdp_sharding", config.trainer.fsdp_sharding, FSDP_SHARDINGS)
    _check_fsdp(config)
    _at_least("trainer.accumulate_grad_batches", config.trainer.accumulate_grad_batches, 1)
    _at_least("trainer.num_nodes", config.trainer.num_nodes, 1)
    _at_least("trainer.checkpoint_every_n_steps", config.trainer.checkpoint_every_n_steps, 1)
    _positive("trainer.checkpoint_every_n_minutes", config.trainer.checkpoint_every_n_minutes, optional=True)
    _at_least("trainer.keep_last", config.trainer.keep_last, 1)
    _at_least("trainer.max_bad_steps", config.trainer.max_bad_steps, 1)
    _at_least("trainer.log_every_n_steps", config.trainer.log_every_n_steps, 1)
    _at_least("trainer.limit_val_batches", config.trainer.limit_val_batches, 0)
    _at_least("trainer.sample_every_n_steps", config.trainer.sample_every_n_steps, 0)
    _at_least("trainer.val_check_interval", config.trainer.val_check_interval, 1, optional=True)
    _positive("trainer.gradient_clip_val", config.trainer.gradient_clip_val, optional=True)
    check_window(config.trainer.throughput_window)
    _one_of("logger.kind", config.logger.kind, LOGGERS)
    _at_least("denoiser.guidance_embed_dim", config.denoiser.guidance_embed_dim, 0)
    if config.stage == "distill":
        check_distill(config)
    elif config.denoiser.guidance_embed_dim:
        _fail("denoiser.guidance_embed_dim", "is for stage=distill (stage 2 trains no guidance input)",
              config.denoiser.guidance_embed_dim)


def check_distill(config: TrainConfig) -> None:
    """The distill section: step counts that halve down to end_steps, a guidance range, known names."""
    distill = config.distill
    _at_least("distill.start_steps", distill.start_steps, 1)
    _at_least("distill.end_steps", distill.end_steps, 1)
    ratio = distill.start_steps // distill.end_steps
    if distill.start_steps % distill.end_steps or ratio & (ratio - 1):
        _fail("distill.start_steps", f"must be end_steps ({distill.end_steps}) times a power of two",
              distill.start_steps)
    _at_least("distill.steps_per_round", distill.steps_per_round, 1)
    _at_least("distill.guidance_steps", distill.guidance_steps, 0)
    if ratio == 1 and distill.guidance_steps == 0:
        _fail("distill.guidance_steps", "must be > 0 when start_steps = end_steps (nothing to distil)",
              distill.guidance_steps)
    low_high = list(distill.guidance_range)
    if len(low_high) != 2 or not 0 <= low_high[0] <= low_high[1]:
        _fail("distill.guidance_range", "must be [low, high] with 0 <= low <= high", low_high)
    _one_of("distill.parameterization", distill.parameterization, PARAMETERIZATIONS)
    _one_of("distill.loss_weighting", distill.loss_weighting, DISTILLATION_WEIGHTINGS)
