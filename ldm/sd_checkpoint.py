"""Stable Diffusion single-file checkpoints in and out.

SD's single-file layout (``v2-1_512-ema-pruned.safetensors`` and the like) is one flat state dict:

    model.diffusion_model.*     the U-Net                      (ldm: LatentDiffusionModule.model.diffusion_model)
    first_stage_model.*         the KL autoencoder             (ldm: .first_stage_model)
    cond_stage_model.model.*    the OpenCLIP text encoder, SD 2 (ldm: .cond_stage_model.model)
    scale_factor                the latent scale, when saved   (ldm: .scale_factor)

Our module's attribute names give exactly these keys, so a conversion is a selection of keys plus
the architecture, which an SD file does not record: :data:`SD_ARCHITECTURES` names the presets.
SD files may also hold LDM's schedule buffers (``betas``, ``alphas_cumprod``, ...) and EMA copy
(``model_ema.*``), which are recomputed or not used here and so are skipped. SD 1.x's text encoder
(``cond_stage_model.transformer.*``, Hugging Face CLIP layout) is not converted: its U-Net and
autoencoder can start a run (``diffusion.init_from``) with an open_clip ViT-L-14 conditioner.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ldm.checkpoint import CheckpointError
from ldm.conditioning.text import OpenCLIPTextEncoder, without_pretrained
from ldm.config import AutoencoderConfig, ConditionerConfig, DiffusionConfig, SamplerConfig, UNetConfig
from ldm.diffusion.scaling import choose_scale_factor

log = logging.getLogger(__name__)

PREFIXES = {
    "denoiser": "model.diffusion_model.",
    "autoencoder": "first_stage_model.",
    "conditioner": "cond_stage_model.model.",
}
"""SD key prefix of each part (the same in ldm's stage-2 state dicts)."""
EMA_PREFIX = "model_ema.module."
"""Where ldm keeps the U-Net's EMA copy (``LatentDiffusionModule.model_ema``)."""
SD_SKIPPED_KEYS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "model_ema.decay",
    "model_ema.num_updates",
)
"""LDM buffers found in SD files that ldm recomputes from the config (schedule) or does not use."""
SD_SKIPPED_PREFIXES = ("model_ema.", "first_stage_model.loss.")
HF_CLIP_PREFIX = "cond_stage_model.transformer."
"""SD 1.x's text encoder (Hugging Face CLIPTextModel layout), not converted."""
SD_SCALE_FACTOR = 0.18215
"""The latent scale of SD's kl-f8 autoencoder (SD files do not store it)."""


@dataclass
class SDArchitecture:
    """What an SD single-file checkpoint does not record: the networks' configs and the objective."""

    description: str
    """One line for --help."""
    denoiser: UNetConfig
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(scale_factor=SD_SCALE_FACTOR))
    image_size: int = 512
    """Training resolution in pixels (the default sampling size)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """The default sampler of the converted checkpoint."""


def sd_architectures() -> dict[str, SDArchitecture]:
    """Named presets (fresh objects each call): sd2 (SD 2.x base, 512px, eps), sd2-v (768px, v), sd15."""
    sd2_unet = UNetConfig()  # the defaults are SD 2's
    sd15_unet = UNetConfig(num_heads=8, context_dim=768, use_linear_in_transformer=False)
    # SD 1.x: OpenAI CLIP ViT-L/14 (QuickGELU), last layer; open_clip holds the same network as ViT-L-14 "openai".
    sd15_text = ConditionerConfig(arch="ViT-L-14-quickgelu", pretrained=None, layer="last")
    return {
        "sd2": SDArchitecture("Stable Diffusion 2.x base (512px, eps-prediction)", sd2_unet),
        "sd2-v": SDArchitecture(
            "Stable Diffusion 2.x 768-v (768px, v-prediction)",
            sd2_unet,
            diffusion=DiffusionConfig(scale_factor=SD_SCALE_FACTOR, parameterization="v"),
            image_size=768,
        ),
        "sd15": SDArchitecture(
            "Stable Diffusion 1.5 (512px, eps; U-Net and autoencoder only)", sd15_unet, conditioner=sd15_text
        ),
    }


def get_sd_architecture(name: str) -> SDArchitecture:
    """The preset called `name`, or the architecture of a run's resolved config (a path to config.yaml)."""
    presets = sd_architectures()
    if name in presets:
        return presets[name]
    if name.endswith((".yaml", ".yml")):
        return sd_architecture_from_config(name)
    raise ValueError(f"unknown SD architecture '{name}'; available: {', '.join(presets)}, or a config.yaml")


def sd_architecture_from_config(path: str | Path) -> SDArchitecture:
    """The architecture described by a training config file (e.g. a run directory's config.yaml)."""
    from omegaconf import OmegaConf

    from ldm.config import TrainConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    config: TrainConfig = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(path))
    )
    return SDArchitecture(
        f"from {path}",
        config.denoiser,
        config.autoencoder,
        config.conditioner,
        config.diffusion,
        config.data.resolution,
        config.sampler,
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict of an SD single-file checkpoint (.safetensors, or .ckpt read with
    weights_only=True) or of an ldm stage-2 checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) torch file cannot be memory-mapped
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{path} cannot be read with weights_only=True ({type(e).__name__}: {first}); "
            "use the .safetensors release of the checkpoint"
        ) from e
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return checkpoint


def split_sd_state_dict(state: dict[str, torch.Tensor], use_ema: bool = True) -> dict[str, Any]:
    """{'denoiser', 'autoencoder', 'conditioner': prefix-free state dicts, 'scale_factor': float or None,
    'skipped': keys not used}; the U-Net comes from ldm's EMA copy when present and `use_ema`.

    Raises CheckpointError on keys that belong to no known part.
    """
    parts: dict[str, Any] = {name: {} for name in PREFIXES}
    ema: dict[str, torch.Tensor] = {}
    skipped, unknown = [], []
    for key, value in state.items():
        name = next((n for n, p in PREFIXES.items() if key.startswith(p)), None)
        if name is not None:
            parts[name][key[len(PREFIXES[name]) :]] = value
        elif key.startswith(EMA_PREFIX):
            ema[key[len(EMA_PREFIX) :]] = value
        elif key == "scale_factor":
            parts["scale_factor"] = float(value)
        elif key in SD_SKIPPED_KEYS or key.startswith((*SD_SKIPPED_PREFIXES, HF_CLIP_PREFIX)):
            skipped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} keys belong to no part of an SD checkpoint, e.g. {', '.join(unknown[:5])}"
        )
    if ema and use_ema:
        if ema.keys() != parts["denoiser"].keys():
            raise CheckpointError("the EMA copy and the U-Net have different keys")
        parts["denoiser"] = ema
    parts.setdefault("scale_factor", None)
    parts["skipped"] = skipped
    parts["hf_clip"] = any(k.startswith(HF_CLIP_PREFIX) for k in skipped)
    return parts


def sd_state_dict_from_ldm(checkpoint: dict[str, Any], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """An ldm stage-2 checkpoint's weights in SD's single-file layout (the EMA U-Net when kept and `use_ema`)."""
    if checkpoint.get("ldm_stage") != "diffusion":
        raise CheckpointError("only a stage-2 (diffusion) checkpoint converts to the SD layout")
    parts = split_sd_state_dict(checkpoint["state_dict"], use_ema=use_ema)
    out = {PREFIXES[name] + k: v for name in PREFIXES for k, v in parts[name].items()}
    out["scale_factor"] = torch.tensor(parts["scale_factor"] if parts["scale_factor"] is not None else 1.0)
    return out


def expected_shapes(arch: SDArchitecture) -> dict[str, dict[str, torch.Size]]:
    """{SD prefix: {key: shape}} of `arch`'s networks, built on the meta device (no memory, no download)."""
    from ldm.autoencoder.model import KLAutoencoder
    from ldm.denoiser.unet import UNetModel

    conditioner = without_pretrained(arch.conditioner)
    with torch.device("meta"):
        networks: dict[str, nn.Module] = {
            "denoiser": UNetModel.from_config(arch.denoiser),
            "autoencoder": KLAutoencoder.from_config(arch.autoencoder),
            "conditioner": OpenCLIPTextEncoder(conditioner).model,
        }
    return {PREFIXES[n]: {k: v.shape for k, v in m.state_dict().items()} for n, m in networks.items()}


def check_part(name: str, state: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> None:
    """Raise CheckpointError unless `state` has exactly the keys and shapes of `shapes`."""
    missing = sorted(shapes.keys() - state.keys())
    unexpected = sorted(state.keys() - shapes.keys())
    wrong = sorted(k for k in shapes.keys() & state.keys() if tuple(state[k].shape) != tuple(shapes[k]))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys, e.g. {', '.join(missing[:3])}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:3])}")
        if wrong:
            k = wrong[0]
            details.append(
                f"{len(wrong)} shape mismatches, e.g. {k}: {tuple(state[k].shape)} vs {tuple(shapes[k])}"
            )
        raise CheckpointError(f"{PREFIXES[name]}* does not fit the architecture: {'; '.join(details)}")


def ldm_checkpoint_from_sd(
    state: dict[str, torch.Tensor],
    arch: SDArchitecture | str,
    *,
    scale_factor: Optional[float] = None,
    sampler: Optional[SamplerConfig] = None,
) -> dict[str, Any]:
    """An ldm stage-2 checkpoint (what ``load_latent_diffusion`` and txt2img take) from SD weights.

    Every part must be present and fit `arch` exactly. The scale factor is `scale_factor`, else
    the file's, else the architecture's.
    """
    arch = get_sd_architecture(arch) if isinstance(arch, str) else arch
    parts = split_sd_state_dict(state)
    for name, prefix in PREFIXES.items():
        if not parts[name]:
            hint = (
                " (this file has SD 1.x's Hugging Face CLIP text encoder, which ldm does not convert; "
                "start a run from its U-Net and autoencoder with diffusion.init_from instead)"
                if name == "conditioner" and parts["hf_clip"]
                else ""
            )
            raise CheckpointError(f"the SD checkpoint has no {prefix}* weights{hint}")
    shapes = expected_shapes(arch)
    for name, prefix in PREFIXES.items():
        check_part(name, parts[name], shapes[prefix])
    if parts["skipped"]:
        log.info("skipped %d keys not used by ldm (schedule buffers, EMA copies)", len(parts["skipped"]))
    scale, _ = choose_scale_factor(
        [
            ("the argument", scale_factor),
            ("the file", parts["scale_factor"]),
            ("the architecture", arch.diffusion.scale_factor),
            ("SD's kl-f8", SD_SCALE_FACTOR),
        ]
    )
    state_dict = {PREFIXES[name] + k: v for name in PREFIXES for k, v in parts[name].items()}
    state_dict["scale_factor"] = torch.tensor(float(scale))
    diffusion = dataclasses.replace(arch.diffusion, scale_factor=float(scale), ema=False, init_from=None)
    hyper_parameters = {
        "autoencoder": dataclasses.asdict(arch.autoencoder),
        "denoiser": dataclasses.asdict(arch.denoiser),
        "conditioner": dataclasses.asdict(without_pretrained(arch.conditioner)),
        "diffusion": dataclasses.asdict(diffusion),
        "sampler": dataclasses.asdict(sampler or arch.sampler),
        "image_size": arch.image_size,
    }
    return {
        "ldm_stage": "diffusion",
        "global_step": 0,
        "state_dict": state_dict,
        "hyper_parameters": hyper_parameters,
    }


def load_part(module: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    check_part(name, state, {k: v.shape for k, v in module.state_dict().items()})
    module.load_state_dict(state, strict=True)


def load_initial_weights(
    module: nn.Module, state: dict[str, torch.Tensor], *, autoencoder: bool = True
) -> list[str]:
    """Initialise a LatentDiffusionModule from SD (or ldm) weights: the U-Net strictly, and the
    autoencoder (when `autoencoder`) and text encoder when the file has them; returns the parts loaded.

    The EMA copy, if kept, restarts from the loaded U-Net.
    """
    parts = split_sd_state_dict(state)
    if not parts["denoiser"]:
        raise CheckpointError("the initial weights have no model.diffusion_model.* keys")
    load_part(module.model.diffusion_model, "denoiser", parts["denoiser"])
    loaded = ["denoiser"]
    if autoencoder and parts["autoencoder"]:
        load_part(module.first_stage_model, "autoencoder", parts["autoencoder"])
        loaded.append("autoencoder")
    if parts["conditioner"]:
        load_part(module.cond_stage_model.model, "conditioner", parts["conditioner"])
        loaded.append("conditioner")
    elif parts["hf_clip"]:
        log.warning(
            "the text encoder in %s is SD 1.x's (Hugging Face CLIP layout): not loaded", HF_CLIP_PREFIX
        )
    if getattr(module, "model_ema", None) is not None:
        module.model_ema.reset(module.model.diffusion_model)
    return loaded


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write a flat state dict as .safetensors, or as a torch file {'state_dict': ...} for any other suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": tensors}, path)
    return path
