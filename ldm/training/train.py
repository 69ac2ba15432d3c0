"""``python -m ldm.train``: compose the config with Hydra and train stage 1 and/or stage 2.

Stage 1 trains the autoencoder (unless ``autoencoder.ckpt_path`` points at a trained one);
stage 2 trains the U-Net on the frozen autoencoder's latents. ``stage=autoencoder`` or
``stage=diffusion`` runs only one of them. ``stage=distill`` distils a trained stage 2
(``diffusion.init_from``) into few-step students (``ldm.training.distill_module``), writing
``checkpoints/distill-N.ckpt`` for each N-step student. A run directory holds::

    config.yaml                         the resolved config
    autoencoder/checkpoints/last.ckpt   stage 1
    autoencoder/images/                 reconstruction grids
    checkpoints/last.ckpt               stage 2 (what python -m ldm.sample txt2img takes)
    images/                             sample grids
    logs/                               metrics (CSV or TensorBoard); W&B: wandb/ and wandb-ids.json
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ldm.autoencoder.latent_stats import stored_channel_stats, stored_scale_factor
from ldm.cli import FULL_ERROR_VARIABLES, user_errors
from ldm.conditioning.text import check_pretrained_available
from ldm.config import AutoencoderConfig, TrainConfig, architecture_fields
from ldm.data.decode import model_inputs
from ldm.data.latents import check_cache_autoencoder, check_cache_text_encoder
from ldm.data.shards import shard_urls
from ldm.diffusion.channel_normalization import channel_stats
from ldm.diffusion.scaling import choose_scale_factor, scale_factor_of_latents
from ldm.training.autoencoder_module import AutoencoderModule
from ldm.training.callbacks import CachedTextCheck, DataQualityCallback, SampleGridCallback
from ldm.training.checkpoint_io import StreamingCheckpointIO
from ldm.training.config_store import register_configs
from ldm.training.datamodule import build_datamodule
from ldm.training.diffusion_module import LatentDiffusionModule
from ldm.training.distill_module import TEACHER_KEY, DistillationCheckpoints, DistillationModule
from ldm.training.distributed import global_rank, prepare_data
from ldm.training.loggers import build_logger, logging_callbacks
from ldm.training.nonfinite import NonFiniteGuard
from ldm.training.precision import resolve_precision
from ldm.training.preemption import PREEMPTED_EXIT_CODE, STOP, Preempted
from ldm.training.run_checkpoints import RunCheckpoints, newest_checkpoint
from ldm.training.step_seed import StepSeed
from ldm.training.strategy import build_strategy, cluster_plugins
from ldm.training.text_encoder import init_from_parts, with_training_text_encoder
from ldm.training.throughput import throughput_callbacks
from ldm.training.validate import check_config
from ldm.weights.checkpoint import autoencoder_weights, read_checkpoint
from ldm.weights.io import read_tensors
from ldm.weights.sd import load_initial_weights

log = logging.getLogger("ldm.train")

TRAIN_FULL_ERROR_VARIABLES = (*FULL_ERROR_VARIABLES, "HYDRA_FULL_ERROR")
"""Environment variables that, set to 1, show a user error's traceback (Hydra's own too)."""
SAMPLE_COMMANDS = {
    "super_resolution": "upscale --init-img small.png",
    "inpainting": "inpaint --init-img in.png --mask mask.png",
}
"""The ``python -m ldm.sample`` command (and its image flags) of each image-conditioned kind; txt2img else."""


register_configs()


def stage_dir(run_dir: Path, stage: str) -> Path:
    """Where a stage writes checkpoints and images: the run dir itself for stage 2."""
    return run_dir / "autoencoder" if stage == "autoencoder" else run_dir


def build_trainer(
    config: TrainConfig,
    run_dir: Path,
    stage: str,
    max_steps: int,
    callbacks: list,
    module: Optional[pl.LightningModule] = None,
) -> pl.Trainer:
    """A Lightning Trainer for one stage (of `module`, which the strategy may need to see)."""
    t = config.trainer
    precision = resolve_precision(t.precision, t.accelerator)
    root_dir = stage_dir(run_dir, stage)
    checkpoints = root_dir / "checkpoints"
    extra = [
        StepSeed(config.seed),
        NonFiniteGuard(t.max_bad_steps, checkpoints),
        DataQualityCallback(config.data.max_skip_fraction),
        *throughput_callbacks(t.throughput_window),
        *logging_callbacks(),
    ]
    checkpointing = RunCheckpoints(
        checkpoints, t.checkpoint_every_n_steps, t.checkpoint_every_n_minutes, keep_last=t.keep_last
    )
    return pl.Trainer(
        default_root_dir=str(root_dir),
        max_steps=max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        precision=precision,
        strategy=build_strategy(t, module, precision) if module is not None else "auto",
        accumulate_grad_batches=1 if stage == "autoencoder" else t.accumulate_grad_batches,
        logger=build_logger(config.logger, run_dir, stage, config),
        callbacks=[checkpointing, *extra, *callbacks],
        log_every_n_steps=t.log_every_n_steps,
        val_check_interval=t.val_check_interval or max_steps,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=0,
        gradient_clip_val=None if stage == "autoencoder" else t.gradient_clip_val,  # stage 1 clips itself
        enable_progress_bar=t.enable_progress_bar,
        enable_checkpointing=False,  # RunCheckpoints writes them
        plugins=[StreamingCheckpointIO(), *cluster_plugins()],
    )


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint that ``resume=`` continues: read once, for its stage and hyper-parameters."""

    path: str
    stage: str
    hparams: dict[str, Any]
    distilling: bool = False
    """Whether a distillation run wrote it (it holds the teacher)."""

    @classmethod
    def read(cls, path: str) -> ResumePoint:
        checkpoint = read_checkpoint(path)
        distilling = TEACHER_KEY in checkpoint
        return cls(str(path), checkpoint["ldm_stage"], checkpoint["hyper_parameters"], distilling)


def train_autoencoder(
    config: TrainConfig,
    datamodule: pl.LightningDataModule,
    run_dir: Path,
    resume: Optional[ResumePoint] = None,
) -> Path:
    """Stage 1: fit the autoencoder (continuing the checkpoint `resume`); returns its checkpoint."""
    root = stage_dir(run_dir, "autoencoder")
    log.info("stage 1: training the autoencoder for %d steps in %s", config.autoencoder.max_steps, root)
    ae_config = config.autoencoder
    if resume is not None:
        ae_config = autoencoder_config(config, resume.hparams["autoencoder"], resume.path)
    module = AutoencoderModule(ae_config, gradient_clip_val=config.trainer.gradient_clip_val)
    module.accelerate(compile=config.trainer.compile, channels_last=config.trainer.channels_last)
    module.seed = config.seed
    datamodule.batch_size = config.autoencoder.batch_size or config.data.batch_size
    trainer = build_trainer(config, run_dir, "autoencoder", config.autoencoder.max_steps, [], module)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume.path if resume else None)
    path = root / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path, weights_only=False)  # full state, for resuming
    log.info("stage 1 done: %s (validation: %s)", path, _metrics(trainer))
    return path


def _metrics(trainer: pl.Trainer) -> str:
    values = [f"{k}={v.item():.4g}" for k, v in trainer.callback_metrics.items() if k.startswith("val/")]
    return ", ".join(values) or "none run"


def load_pretrained_autoencoder(config: TrainConfig, path: str | Path) -> tuple[AutoencoderConfig, dict]:
    """The architecture (from the checkpoint, overriding the config's) and weights of a trained autoencoder."""
    hparams, state = autoencoder_weights(read_checkpoint(path))
    return autoencoder_config(config, hparams, path), state


def autoencoder_config(config: TrainConfig, hparams: dict[str, Any], source: str | Path) -> AutoencoderConfig:
    """The config's autoencoder with the architecture of a checkpoint's hparams (training fields kept)."""
    arch = architecture_fields(AutoencoderConfig)
    ae_config = AutoencoderConfig(**{**asdict(config.autoencoder), **{k: hparams[k] for k in arch}})
    differing = sorted(k for k in arch if getattr(config.autoencoder, k) != hparams[k])
    if differing:
        log.info(
            "autoencoder architecture taken from %s (differs from the config in: %s)",
            source,
            ", ".join(differing),
        )
    return ae_config


def check_cached_latents(config: TrainConfig) -> None:
    """Cached latents train stage 2 only, with the autoencoder that cached them; cached text
    embeddings need cached latents and a frozen text encoder (its weights are checked at the fit's
    start, once they are final)."""
    if config.data.cached_text and not config.data.cached_latents:
        raise ValueError(
            "data.cached_text=true reads text embeddings from latent shards: set data.cached_latents=true"
        )
    if config.data.cached_text and config.conditioner.trainable:
        raise ValueError(
            "data.cached_text=true skips the text encoder, which conditioner.trainable=true would train: "
            "set one of them to false"
        )
    if not config.data.cached_latents:
        return
    if config.stage == "distill":  # the teacher's autoencoder (a resumed run's is the same)
        check_cache_autoencoder(shard_urls(config.data)[0], config.diffusion.init_from or config.resume)
        return
    if config.stage != "diffusion":
        raise ValueError(
            f"data.cached_latents=true trains the diffusion stage only (stage 1 needs images): set "
            f"stage=diffusion (got stage={config.stage})"
        )
    if not config.autoencoder.ckpt_path:
        raise ValueError(
            "data.cached_latents=true needs autoencoder.ckpt_path=<the checkpoint the latents were cached with>"
        )
    check_cache_autoencoder(shard_urls(config.data)[0], config.autoencoder.ckpt_path)


def train_diffusion(
    config: TrainConfig,
    datamodule: pl.LightningDataModule,
    run_dir: Path,
    autoencoder_ckpt: Optional[Path | str],
    resume: Optional[ResumePoint] = None,
) -> Path:
    """Stage 2: fit the U-Net on latents of the frozen autoencoder; returns the checkpoint.

    The autoencoder comes from `autoencoder_ckpt`, or else from diffusion.init_from (SD weights);
    with `resume`, everything comes from that stage-2 checkpoint, which the fit continues.
    """
    if resume is not None:
        module = LatentDiffusionModule.from_hparams(
            resume.hparams, diffusion=config.diffusion, sampler=config.sampler
        )
        datamodule.batch_size = config.diffusion.batch_size or config.data.batch_size
        return fit_diffusion(config, module, datamodule, run_dir, resume.path)
    if autoencoder_ckpt:
        ae_config, ae_state = load_pretrained_autoencoder(config, autoencoder_ckpt)
    else:
        ae_config, ae_state = config.autoencoder, None
    module = LatentDiffusionModule(
        autoencoder=ae_config,
        denoiser=config.denoiser,
        conditioner=config.conditioner,
        diffusion=config.diffusion,
        sampler=config.sampler,
        image_size=config.data.resolution,
        image_conditioning=config.image_conditioning,
    )
    if ae_state is not None:
        module.first_stage_model.load_state_dict(ae_state, strict=True)
    file_scale = None
    if config.diffusion.init_from:
        state = read_tensors(config.diffusion.init_from)
        loaded = load_initial_weights(module, state, autoencoder=ae_state is None)
        if "scale_factor" in state and "autoencoder" in loaded:
            file_scale = float(state["scale_factor"])
        del state
        log.info("initial weights from %s: %s", config.diffusion.init_from, ", ".join(loaded))
    if config.data.cached_text:  # the text encoder's weights are final (a resumed fit checks at its start)
        check_cache_text_encoder(shard_urls(config.data)[0], module.cond_stage_model)
    datamodule.batch_size = config.diffusion.batch_size or config.data.batch_size

    def latents() -> Iterator[torch.Tensor]:
        """Unscaled posterior samples, from the images or from cached moments."""
        datamodule.setup("fit")
        return (module.posterior_of(model_inputs(batch)).sample() for batch in datamodule.train_dataloader())

    if config.diffusion.latent_normalization == "channel":
        stats, source = stored_channel_stats(autoencoder_ckpt), f"the latent statistics of {autoencoder_ckpt}"
        if stats is None:
            stats = channel_stats(latents(), config.diffusion.scale_batches)
            source = f"{config.diffusion.scale_batches} batches of latents"
        for buffer, values in zip(module.channel_statistics(), stats):
            buffer.copy_(values)
        mean, std = ([round(float(v), 3) for v in values] for values in stats)
        log.info("latents normalized per channel: mean %s, std %s, from %s", mean, std, source)
        return fit_diffusion(config, module, datamodule, run_dir)

    def estimate() -> float:
        return scale_factor_of_latents(latents(), config.diffusion.scale_batches)

    scale, source = choose_scale_factor(
        [
            ("diffusion.scale_factor", config.diffusion.scale_factor),
            (f"{config.diffusion.init_from}", file_scale),
            (f"the latent statistics of {autoencoder_ckpt}", lambda: stored_scale_factor(autoencoder_ckpt)),
            (f"1/std of {config.diffusion.scale_batches} batches of latents", estimate),
        ]
    )
    module.scale_factor.fill_(scale)
    log.info("latent scale factor %.5f from %s", scale, source)
    return fit_diffusion(config, module, datamodule, run_dir)


def train_distill(
    config: TrainConfig,
    datamodule: pl.LightningDataModule,
    run_dir: Path,
    resume: Optional[ResumePoint] = None,
) -> Path:
    """stage=distill: distil the stage-2 checkpoint diffusion.init_from (or continue the distillation
    checkpoint `resume`); returns the last checkpoint."""
    if resume is not None:
        module = DistillationModule.from_resume(resume.hparams, config)
    else:
        module = DistillationModule.from_teacher(config.diffusion.init_from, config)
        if config.data.cached_text:  # the teacher's text encoder (a resumed fit checks at its start)
            check_cache_text_encoder(shard_urls(config.data)[0], module.cond_stage_model)
    datamodule.batch_size = config.diffusion.batch_size or config.data.batch_size
    plan = ", ".join(f"{p.kind} {p.steps} steps ({p.end - p.begin})" for p in module.phases)
    log.info("distilling %s: %s", module.diffusion_config.init_from, plan)
    return fit_diffusion(config, module, datamodule, run_dir, resume.path if resume else None)


def fit_diffusion(
    config: TrainConfig,
    module: LatentDiffusionModule,
    datamodule: pl.LightningDataModule,
    run_dir: Path,
    resume: Optional[str] = None,
) -> Path:
    """Run stage 2's (or a distillation's) Trainer on a built module; returns the checkpoint."""
    module.accelerate(compile=config.trainer.compile, channels_last=config.trainer.channels_last)
    module.seed = config.seed
    distilling = isinstance(module, DistillationModule)
    max_steps = module.total_steps if distilling else config.diffusion.max_steps
    n_params = sum(p.numel() for p in module.model.parameters())
    log.info(
        "%s: training the U-Net (%.2fM parameters) for %d steps",
        "distillation" if distilling else "stage 2",
        n_params / 1e6,
        max_steps,
    )
    grids = SampleGridCallback(
        config.trainer.sample_prompts, every_n_steps=config.trainer.sample_every_n_steps
    )
    callbacks: list[pl.Callback] = [grids]
    if distilling:
        callbacks.append(DistillationCheckpoints(run_dir / "checkpoints", module.phases, grids))
    if config.data.cached_text and resume is not None:
        callbacks.append(CachedTextCheck(shard_urls(config.data)[0]))
    trainer = build_trainer(config, run_dir, "diffusion", max_steps, callbacks, module)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    path = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path, weights_only=False)  # full state, for resuming
    what = "distillation" if distilling else "stage 2"
    log.info("%s done: %s (validation: %s)", what, path, _metrics(trainer))
    log.info(
        'sample with: python -m ldm.sample %s --ckpt %s --prompt "..." --outdir out/',
        SAMPLE_COMMANDS.get(module.image_conditioning.task, "txt2img"),
        path,
    )
    return path


def run(config: TrainConfig, run_dir: Path) -> dict[str, Optional[Path]]:
    """Train what `config.stage` asks for in `run_dir`; returns the checkpoints written."""
    check_config(config)  # before anything is read, built, generated or downloaded
    STOP.install()  # SIGTERM/SIGUSR1 from here on: a checkpoint at the next step boundary, then exit
    if config.resume == "auto":
        found = newest_checkpoint(run_dir)
        log.info("resume=auto: %s", f"continuing from {found}" if found else "no checkpoint yet, starting")
        config = replace(config, resume=str(found) if found else None)
    resume = ResumePoint.read(config.resume) if config.resume else None
    resume_stage = resume.stage if resume else None
    if resume_stage == "autoencoder" and config.stage in ("diffusion", "distill"):
        raise ValueError(f"resume={config.resume} is a stage-1 checkpoint, but stage={config.stage}")
    if resume_stage == "diffusion" and config.stage == "autoencoder":
        raise ValueError(f"resume={config.resume} is a stage-2 checkpoint, but stage=autoencoder")
    check_distill_resume(config, resume)
    init_parts = init_from_parts(config.diffusion.init_from) if config.diffusion.init_from else set()
    init_autoencoder = "autoencoder" in init_parts
    config = with_training_text_encoder(config, init_parts)
    if config.stage == "diffusion" and not (config.autoencoder.ckpt_path or init_autoencoder or resume_stage):
        raise ValueError(
            "stage=diffusion needs a trained autoencoder: set autoencoder.ckpt_path=<stage-1 checkpoint>"
        )
    # The autoencoder that stage 2 will use, when a checkpoint brings its own architecture.
    if resume is not None and "autoencoder" in resume.hparams:
        check_config(config, AutoencoderConfig(**resume.hparams["autoencoder"]))
    elif config.autoencoder.ckpt_path:
        hparams, _ = autoencoder_weights(read_checkpoint(config.autoencoder.ckpt_path))
        check_config(config, AutoencoderConfig(**hparams))
    check_cached_latents(config)
    if config.stage in ("all", "diffusion"):
        check_pretrained_available(config.conditioner)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    pl.seed_everything(config.seed, workers=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    prepare_data(config.data)  # the shapes set: written by rank 0, awaited by the others
    datamodule = build_datamodule(config.data)
    written: dict[str, Optional[Path]] = {"autoencoder": None, "diffusion": None}
    autoencoder_ckpt = config.autoencoder.ckpt_path
    skip_stage1 = bool(autoencoder_ckpt) or (config.stage == "all" and init_autoencoder)
    skip_stage1 = (skip_stage1 and resume_stage != "autoencoder") or resume_stage == "diffusion"
    if config.stage in ("all", "autoencoder") and not skip_stage1:
        stage1_resume = resume if resume_stage == "autoencoder" else None
        autoencoder_ckpt = written["autoencoder"] = train_autoencoder(
            config, datamodule, run_dir, stage1_resume
        )
    elif config.stage == "all":
        source = (
            config.resume if resume_stage == "diffusion" else autoencoder_ckpt or config.diffusion.init_from
        )
        log.info("stage 1 skipped: using the trained autoencoder %s", source)
    if config.stage == "distill":
        written["diffusion"] = train_distill(config, datamodule, run_dir, resume)
    if config.stage in ("all", "diffusion"):
        stage2_resume = resume if resume_stage == "diffusion" else None
        written["diffusion"] = train_diffusion(config, datamodule, run_dir, autoencoder_ckpt, stage2_resume)
    return written


def check_distill_resume(config: TrainConfig, resume: Optional[ResumePoint]) -> None:
    """A distillation continues only a distillation checkpoint, and needs a teacher to start from."""
    if config.stage != "distill":
        if resume is not None and resume.distilling:
            raise ValueError(f"resume={resume.path} is a distillation run's checkpoint: set stage=distill")
        return
    if resume is None and not config.diffusion.init_from:
        raise ValueError("stage=distill needs a stage-2 checkpoint to distil: set diffusion.init_from=<ckpt>")
    if resume is not None and not resume.distilling:
        raise ValueError(
            f"resume={resume.path} is not a distillation run's checkpoint: to distil it, set "
            f"diffusion.init_from={resume.path} (without resume)"
        )


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    config: TrainConfig = OmegaConf.to_object(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if global_rank() == 0:  # one writer per job
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    try:
        with user_errors(TRAIN_FULL_ERROR_VARIABLES, log.error, "set HYDRA_FULL_ERROR=1 for the traceback"):
            run(config, run_dir)
    except Preempted as e:
        log.warning("%s", e)
        sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
