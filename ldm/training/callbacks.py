"""Lightning callbacks: sample grids during stage-2 training, data-quality reports, the cached-text check."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid, save_image

from ldm.conditioning.low_resolution import downsample
from ldm.data.decode import model_inputs
from ldm.data.latents import check_cache_text_encoder
from ldm.data.quality import CORRUPT_KINDS, SKIP_KINDS, DataQualityError, SampleCounter, breakdown
from ldm.inpainter import Inpainter
from ldm.pipeline import Text2Image
from ldm.training.strategy import unsharded_denoiser
from ldm.upscaler import Upscaler

log = logging.getLogger(__name__)

SAMPLE_TABLE_COLUMNS = ("step", "prompt", "seed", "image")
"""Columns of the W&B table of training samples (``sample_table``), one row per sample."""


def to_pixels(image: torch.Tensor) -> np.ndarray:
    """An image [3, H, W] in [0, 1] as uint8 pixels [H, W, 3], rounded as torchvision's save_image does."""
    return image.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class SampleGridCallback(pl.Callback):
    """Every `every_n_steps` (and at the end of training) samples `prompts` and saves a grid PNG.

    Each row is one prompt, each column one seed, so grids from different steps compare directly.
    An image-conditioned model's rows start from the first validation images: a super-resolution
    model upscales image i (downsampled) with its own caption, an inpainting model redraws the
    middle of image i toward prompt i; the first column shows that input. Files go to
    ``<root dir>/images/samples-stepNNNNNN.png``; W&B runs also get the image and a table of the
    samples with their prompts and seeds; TensorBoard gets the image and the prompts.
    """

    def __init__(self, prompts: Sequence[str], n_per_prompt: int = 4, every_n_steps: int = 0, seed: int = 0):
        if not prompts:
            raise ValueError("SampleGridCallback needs at least one prompt")
        self.prompts = list(prompts)
        self.n_per_prompt = n_per_prompt
        self.every_n_steps = every_n_steps
        self.seed = seed
        self.last_path: Path | None = None
        self._last_step = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.log_grid(trainer, pl_module)

    @torch.no_grad()
    def log_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step  # on every rank: under FSDP every rank takes part
        with unsharded_denoiser(trainer, pl_module):
            if trainer.is_global_zero:
                self._sample_grid(trainer, pl_module)

    def _sample_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        was_training = pl_module.training
        pl_module.eval()
        prompts = [p for p in self.prompts for _ in range(self.n_per_prompt)]
        seeds = [self.seed + i for _ in self.prompts for i in range(self.n_per_prompt)]
        ema_scope = getattr(pl_module, "ema_scope", contextlib.nullcontext)
        task = getattr(getattr(pl_module, "image_conditioning", None), "task", "none")
        with ema_scope():  # the EMA weights when the module keeps them
            if task == "none":
                images = Text2Image.from_module(pl_module)(prompts, seeds)
                shown, columns = images, self.n_per_prompt
            else:
                inputs, captions = validation_images(trainer, len(self.prompts))
                if task == "super_resolution":
                    prompts = [c for c in captions for _ in range(self.n_per_prompt)]
                shown_inputs, images = image_conditioned_samples(pl_module, inputs, prompts, seeds)
                shown = with_input_column(shown_inputs, images)
                columns = self.n_per_prompt + 1
        pl_module.train(was_training)
        path = Path(trainer.default_root_dir) / "images" / f"samples-step{trainer.global_step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(shown, path, nrow=columns, padding=1)
        self.last_path = path
        log.info("sample grid at step %d: %s", trainer.global_step, path)
        grid = make_grid(shown, nrow=columns, padding=1)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, trainer.global_step, grid, images, prompts, seeds)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, trainer.global_step)
                logger.experiment.add_text("samples/prompts", " | ".join(self.prompts), trainer.global_step)

    def _log_wandb(
        self,
        logger: WandbLogger,
        step: int,
        grid: torch.Tensor,
        images: torch.Tensor,
        prompts: list[str],
        seeds: list[int],
    ) -> None:
        """The grid, and a table with one row (step, prompt, seed, image) per sample."""
        import wandb

        # Pixels as uint8 [H, W, 3]: W&B casts float tensors to uint8 as they are (all black for [0, 1]).
        logger.log_image("samples", [to_pixels(grid)], step=step, caption=[" | ".join(self.prompts)])
        rows = [[step, p, s, wandb.Image(to_pixels(x))] for p, s, x in zip(prompts, seeds, images)]
        logger.log_table("sample_table", columns=list(SAMPLE_TABLE_COLUMNS), data=rows, step=step)


def validation_images(trainer: pl.Trainer, n: int) -> tuple[torch.Tensor, list[str]]:
    """The first `n` validation images [n, 3, H, W] in [0, 1] (repeated if there are fewer) and captions."""
    batch = model_inputs(next(iter(trainer.datamodule.val_dataloader())))
    index = [i % len(batch["caption"]) for i in range(n)]
    return (batch["image"][index].float().cpu() + 1) / 2, [batch["caption"][i] for i in index]


def centre_masks(images: torch.Tensor) -> torch.Tensor:
    """Masks [B, 1, H, W] that redraw the middle half of each side (the centre quarter of the image)."""
    b, _, h, w = images.shape
    masks = torch.zeros(b, 1, h, w)
    masks[:, :, h // 4 : h - h // 4, w // 4 : w - w // 4] = 1
    return masks


def image_conditioned_samples(
    module: pl.LightningModule, inputs: torch.Tensor, prompts: list[str], seeds: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(what each input gives the model, as an image; the samples): len(seeds) // len(inputs) samples of
    each input in turn, with those prompts and seeds, from a super-resolution model (the input
    downsampled, then upscaled) or an inpainting one (its middle masked, then redrawn)."""
    n = len(seeds) // len(inputs)
    if module.image_conditioning.task == "super_resolution":
        upscaler = Upscaler.from_module(module)
        low_res = downsample(inputs, upscaler.factor).clamp(0, 1)
        samples = upscaler(low_res.repeat_interleave(n, dim=0), prompts, seeds)
        return F.interpolate(low_res, scale_factor=upscaler.factor, mode="nearest"), samples
    masks = centre_masks(inputs)
    repeated, repeated_masks = inputs.repeat_interleave(n, dim=0), masks.repeat_interleave(n, dim=0)
    samples = Inpainter.from_module(module)(repeated, repeated_masks, prompts, seeds)
    return inputs * (1 - masks) + 0.5 * masks, samples  # the masked part grey, as the model sees it


def with_input_column(inputs: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Grid rows [input i, its samples]: len(inputs) inputs with len(samples) // len(inputs) samples each."""
    n = len(samples) // len(inputs)
    rows = [torch.cat([inputs[i : i + 1], samples[i * n : (i + 1) * n]]) for i in range(len(inputs))]
    return torch.cat(rows)


class DataQualityCallback(pl.Callback):
    """Reports the training stream's SampleCounter; enforces ``max_skip_fraction``.

    The counter is the datamodule's ``train_counter``. The ceiling is checked once at least
    ``min_samples`` samples were read or skipped, so that a few broken samples at the start of a
    stream do not stop a run. ``data/read`` and ``data/corrupt`` are logged every ``log_every_n_steps``
    steps (default: every step, so that the Trainer's ``log_every_n_steps`` decides what is kept).
    """

    def __init__(self, max_skip_fraction: float = 0.5, min_samples: int = 256, log_every_n_steps: int = 1):
        if not 0.0 < max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in (0, 1], got {max_skip_fraction}")
        self.max_skip_fraction = max_skip_fraction
        self.min_samples = min_samples
        self.log_every_n_steps = log_every_n_steps

    @staticmethod
    def counter(trainer: pl.Trainer) -> SampleCounter | None:
        return getattr(trainer.datamodule, "train_counter", None)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        counter = self.counter(trainer)
        if counter is not None:
            # Count this fit only (stages share a data module); before the loop's first prefetch.
            counter.reset()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches_this_epoch = 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # An epoch without a batch would repeat forever: fewer usable samples than one batch. The
        # first epoch of a resumed fit may rightly be empty (the checkpoint was at its last batch).
        resumed = getattr(trainer.datamodule, "resuming", False)
        if resumed:
            trainer.datamodule.resuming = False
        if getattr(self, "_batches_this_epoch", 1) == 0 and not resumed:
            counter = self.counter(trainer)
            totals = counter.totals() if counter is not None else {"read": 0, **dict.fromkeys(SKIP_KINDS, 0)}
            raise DataQualityError(
                f"a training epoch gave no batch: {totals['read']} usable samples per pass are fewer than "
                f"one batch per DataLoader worker (skipped: {breakdown(totals)}); use more data or a smaller batch"
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx
    ):
        self._batches_this_epoch = getattr(self, "_batches_this_epoch", 0) + 1
        counter = self.counter(trainer)
        if counter is None:
            return
        totals = counter.totals()
        corrupt = sum(totals[k] for k in CORRUPT_KINDS)
        seen = totals["read"] + corrupt + totals["filtered"]
        if trainer.global_step % self.log_every_n_steps == 0:
            pl_module.log_dict({"data/read": float(totals["read"]), "data/corrupt": float(corrupt)})
        if seen >= self.min_samples and corrupt / seen > self.max_skip_fraction:
            raise DataQualityError(
                f"{corrupt} of {seen} samples read so far were corrupt "
                f"({corrupt / seen:.0%} > data.max_skip_fraction={self.max_skip_fraction}): "
                f"{breakdown(totals)}. Check the shards."
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        counter = self.counter(trainer)
        if counter is not None:
            totals = counter.totals()
            corrupt = sum(totals[k] for k in CORRUPT_KINDS)
            log.info(
                "data: read %d samples, skipped %d corrupt (%s)", totals["read"], corrupt, breakdown(totals)
            )


class CachedTextCheck(pl.Callback):
    """At the start of a fit, once the weights are final (initial, loaded or resumed), checks that
    the cached text embeddings of `train_urls` come from the module's text encoder."""

    def __init__(self, train_urls: list[str]):
        self.train_urls = list(train_urls)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_cache_text_encoder(self.train_urls, pl_module.cond_stage_model)
