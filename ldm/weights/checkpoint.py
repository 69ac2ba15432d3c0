"""This project's checkpoints: read with one-line errors for a missing, unreadable or wrong-stage file.

Lightning checkpoints here hold only plain Python types and tensors, so they load with
``torch.load(weights_only=True)`` (:func:`ldm.weights.io.read_torch_file`); ``ldm_stage`` says which
stage wrote them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ldm.weights.io import WeightsError, load_checked, read_torch_file

STAGES = ("autoencoder", "diffusion")


CheckpointError = WeightsError
"""A checkpoint that cannot be read or cannot serve the purpose it was given for (the name scripts catch)."""


def read_checkpoint(path: str | Path, expected_stage: str | None = None) -> dict[str, Any]:
    """The checkpoint dict at `path`, checked to come from `expected_stage` when given."""
    path = Path(path)
    if not path.is_file():
        hint = (
            " (a run writes it to <run dir>/checkpoints/last.ckpt)" if expected_stage == "diffusion" else ""
        )
        raise FileNotFoundError(f"checkpoint not found: {path}{hint}")
    checkpoint = read_torch_file(path, "checkpoint")
    stage = checkpoint.get("ldm_stage") if isinstance(checkpoint, dict) else None
    if stage not in STAGES:
        raise CheckpointError(f"{path} is not an ldm checkpoint (it has no 'ldm_stage' entry)")
    if expected_stage is not None and stage != expected_stage:
        what = {"autoencoder": "a stage-1 autoencoder", "diffusion": "a stage-2 latent diffusion"}
        raise CheckpointError(
            f"{path} is {what[stage]} checkpoint, but {what[expected_stage]} checkpoint is needed"
        )
    return checkpoint


def autoencoder_weights(checkpoint: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(autoencoder hparams, KLAutoencoder state dict) from a stage-1 or stage-2 checkpoint."""
    prefix = "autoencoder." if checkpoint["ldm_stage"] == "autoencoder" else "first_stage_model."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    return checkpoint["hyper_parameters"]["autoencoder"], state


def load_autoencoder(path: str | Path):
    """A KLAutoencoder with the weights of a stage-1 checkpoint (or of a stage-2 one's first stage)."""
    from ldm.autoencoder.model import KLAutoencoder
    from ldm.config import AutoencoderConfig

    hparams, state = autoencoder_weights(read_checkpoint(path))
    model = KLAutoencoder.from_config(AutoencoderConfig(**hparams))
    load_checked(model, state, f"the autoencoder weights in {path} do not fit its hyper-parameters")
    return model.eval()


TASK_COMMANDS = {
    "none": "python -m ldm.sample txt2img (or img2img)",
    "super_resolution": "scripts/upscale.py",
    "inpainting": "scripts/inpaint.py",
}
"""The command that samples each kind of model (``image_conditioning.task``)."""


def check_task(checkpoint: dict[str, Any], task: str, path: str | Path) -> None:
    """Raise a one-line CheckpointError unless the stage-2 `checkpoint` is of the kind `task`."""
    from ldm.conditioning.image import TASK_NAMES

    def kind(name: str) -> str:
        return ("an " if name[0] in "aeiou" else "a ") + name

    found = checkpoint["hyper_parameters"].get("image_conditioning", {}).get("task", "none")
    if found != task:
        command = TASK_COMMANDS.get(found, "its own command")
        raise CheckpointError(
            f"{path} is {kind(TASK_NAMES.get(found, found))} checkpoint (image_conditioning.task={found}), "
            f"but this needs {kind(TASK_NAMES[task])} one; sample it with {command}"
        )


def load_latent_diffusion(path: str | Path, use_ema: bool = True, task: str | None = None):
    """The ``LatentDiffusion`` networks with the weights of a stage-2 checkpoint, in eval mode; with
    `task`, the checkpoint must be of that kind (image_conditioning.task: none for text-to-image).

    When the checkpoint keeps an EMA of the U-Net and `use_ema`, the averaged weights are copied
    into ``model.diffusion_model`` (what samplers use) and the separate copy is dropped.
    """
    from ldm.diffusion.latent_diffusion import LatentDiffusion

    checkpoint = read_checkpoint(path, expected_stage="diffusion")
    if task is not None:
        check_task(checkpoint, task, path)
    module = LatentDiffusion.from_hparams(checkpoint["hyper_parameters"])
    load_checked(module, checkpoint["state_dict"], f"the weights in {path} do not fit its hyper-parameters")
    if module.model_ema is not None and use_ema:
        module.model_ema.copy_to(module.model.diffusion_model)
        module.model_ema = None
    return module.eval()
