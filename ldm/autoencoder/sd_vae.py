"""Stable Diffusion VAE weights in and out of ``KLAutoencoder``.

``KLAutoencoder``'s state dict is the SD VAE's, so loading is a matter of finding it in the file:
a standalone VAE (``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``, as
``vae-ft-mse-840000-ema-pruned``), or the ``first_stage_model.*`` part of a full SD checkpoint;
LDM's training-only ``loss.*`` entries (LPIPS, discriminator, logvar) are dropped. Either as
.safetensors or as a torch file read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ldm.autoencoder.model import KLAutoencoder
from ldm.config import AutoencoderConfig

FULL_CHECKPOINT_PREFIX = "first_stage_model."
"""Where a full SD checkpoint keeps its VAE."""
VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
"""The top-level modules of the SD VAE."""
TRAINING_ONLY_PREFIX = "loss."
"""LDM's LPIPSWithDiscriminator entries in a VAE training checkpoint: not part of the VAE."""


def sd_vae_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The VAE's own entries of a flat state dict: standalone, or under ``first_stage_model.``."""
    if any(k.startswith(FULL_CHECKPOINT_PREFIX) for k in state):
        state = {
            k[len(FULL_CHECKPOINT_PREFIX) :]: v
            for k, v in state.items()
            if k.startswith(FULL_CHECKPOINT_PREFIX)
        }
    else:
        # A standalone file may hold other top-level entries (a stray "model_ema.decay", ...).
        state = {k: v for k, v in state.items() if k.startswith(VAE_PREFIXES)}
    return {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY_PREFIX)}


def load_sd_vae_state(model: KLAutoencoder, state: dict[str, Tensor]) -> None:
    """Load an SD-layout VAE state dict strictly, with an error that lists what does not fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    if missing or unexpected or wrong_shape:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
                parts.append(f"{name}: {shown}")
        raise ValueError("the VAE weights do not fit the configured autoencoder; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _read_flat(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"VAE checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} cannot be read with weights_only=True ({type(e).__name__}: {e})") from e
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds no state dict")
    return {k: v for k, v in checkpoint.items() if isinstance(v, Tensor)}


def load_sd_vae(path: str | Path, config: AutoencoderConfig) -> KLAutoencoder:
    """A ``KLAutoencoder`` built from `config` with the SD VAE weights at `path` (.ckpt or .safetensors), in eval mode."""
    state = sd_vae_state_dict(_read_flat(Path(path)))
    if not state:
        raise ValueError(
            f"{path} holds no SD VAE weights (no encoder.*/decoder.* or first_stage_model.* keys)"
        )
    model = KLAutoencoder.from_config(config)
    load_sd_vae_state(model, state)
    return model.eval()


def save_sd_vae(model: KLAutoencoder, path: str | Path) -> Path:
    """Write the VAE as a standalone SD VAE file: .safetensors, or a torch file ``{"state_dict": ...}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": tensors}, path)
    return path
