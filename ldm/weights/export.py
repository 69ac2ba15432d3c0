"""The architecture beside an exported SD single file: an LDM inference yaml and diffusers configs.

An SD single file (``model.diffusion_model.*``, ``first_stage_model.*``, ...) holds weights only;
the tools that read it assume SD's architecture unless told otherwise. A network of another size
then loads without an error and computes something else: the tiny presets' autoencoder has 8
GroupNorm groups, diffusers' ``AutoencoderKL.from_single_file`` builds 32 by default, and decodes
with relative errors of order one. :func:`export_sd` therefore writes, beside the single file,

    <stem>.yaml                              LDM / SD's inference config (``v2-inference.yaml``'s layout)
    <stem>-diffusers/unet/config.json        UNet2DConditionModel
    <stem>-diffusers/vae/config.json         AutoencoderKL
    <stem>-diffusers/scheduler/scheduler_config.json

each only when every setting that changes the model's outputs can be stated there
(:func:`unstatable_settings`); otherwise it logs which setting cannot and writes nothing for that
target, since a config that loads silently wrong is worse than none. Load them with

    AutoencoderKL.from_single_file("model.safetensors", config="model-diffusers", subfolder="vae")
    UNet2DConditionModel.from_single_file("model.safetensors", config="model-diffusers", subfolder="unet")

Where this project's networks and the targets' agree by construction (checked by the tests
against diffusers): the U-Net's GroupNorm has 32 groups (eps 1e-5 in residual blocks, 1e-6 before
the transformers), its timestep embedding puts cosines first with no shift, heads are either a
fixed width (SD 2) or a fixed count (SD 1), projections linear or 1x1 convs; the autoencoder's
norms have eps 1e-6 and its down-sampling pads right and bottom. Dropout acts in training only: it
is stated where the target has a field for it and otherwise left out. Image-conditioned models
(``image_conditioning``) get SD's classes: LDM's ``LatentUpscaleDiffusion`` (with its noise
augmentation and ``num_classes``) and ``LatentInpaintDiffusion``; diffusers' ``num_class_embeds``
and ``only_cross_attention``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from ldm.conditioning.low_resolution import NOISE_SCHEDULE
from ldm.config import (
    AutoencoderConfig,
    ConditionerConfig,
    DiffusionConfig,
    ImageConditioningConfig,
    SamplerConfig,
    UNetConfig,
)
from ldm.weights.checkpoint import read_checkpoint
from ldm.weights.io import write_tensors
from ldm.weights.sd import sd_state_dict_from_ldm

log = logging.getLogger(__name__)

TARGETS = ("ldm", "diffusers_unet", "diffusers_vae", "diffusers_scheduler")
"""What :func:`unstatable_settings` judges: the LDM yaml and the three diffusers configs."""
DIFFUSERS_FILES = {
    "diffusers_unet": Path("unet") / "config.json",
    "diffusers_vae": Path("vae") / "config.json",
    "diffusers_scheduler": Path("scheduler") / "scheduler_config.json",
}
"""Where each diffusers config goes inside ``<stem>-diffusers/``."""
LDM_GROUPS = 32
"""GroupNorm groups of every network of LDM/SD's code (not a setting there), and of our U-Net."""
COSINE_S_DIFFUSERS = 0.008
"""The offset of diffusers' ``squaredcos_cap_v2`` betas (fixed there)."""
LDM_BETA_SCHEDULES = {"scaled_linear": "linear", "linear": "sqrt_linear", "cosine": "cosine"}
"""Our beta schedule names -> LDM's: LDM's "linear" is linear in sqrt(beta), SD's schedule."""
DIFFUSERS_BETA_SCHEDULES = {
    "scaled_linear": "scaled_linear",
    "linear": "linear",
    "cosine": "squaredcos_cap_v2",
}
DIFFUSERS_PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
LDM_MODELS = {
    "none": ("ldm.models.diffusion.ddpm.LatentDiffusion", "crossattn"),
    "super_resolution": ("ldm.models.diffusion.ddpm.LatentUpscaleDiffusion", "hybrid-adm"),
    "inpainting": ("ldm.models.diffusion.ddpm.LatentInpaintDiffusion", "hybrid"),
}
"""LDM's model class and conditioning key of each image_conditioning.task."""


def _configs(
    hparams: dict[str, Any],
) -> tuple[AutoencoderConfig, UNetConfig, ConditionerConfig, DiffusionConfig]:
    for part in ("autoencoder", "denoiser", "conditioner", "diffusion", "image_size"):
        if part not in hparams:
            raise ValueError(f"the checkpoint's hyper_parameters have no '{part}' entry")
    return (
        AutoencoderConfig(**hparams["autoencoder"]),
        UNetConfig(**hparams["denoiser"]),
        ConditionerConfig(**hparams["conditioner"]),
        DiffusionConfig(**hparams["diffusion"]),
    )


def _downsampling(autoencoder: AutoencoderConfig) -> int:
    return 2 ** (len(autoencoder.ch_mult) - 1)


def _vae_attention_levels(autoencoder: AutoencoderConfig) -> list[int]:
    """Feature-map sides of the autoencoder's levels at which its encoder and decoder have attention."""
    sides = [autoencoder.resolution // 2**level for level in range(len(autoencoder.ch_mult))]
    return [side for side in sides if side in autoencoder.attn_resolutions]


def unstatable_settings(hparams: dict[str, Any]) -> dict[str, list[str]]:
    """{target: settings of the checkpoint that change its outputs but cannot be stated there}, one
    line each; an empty list means the target's config describes the networks exactly."""
    autoencoder, denoiser, conditioner, diffusion = _configs(hparams)
    found: dict[str, list[str]] = {target: [] for target in TARGETS}
    if autoencoder.norm_groups != LDM_GROUPS:
        found["ldm"].append(
            f"autoencoder.norm_groups={autoencoder.norm_groups}: LDM's autoencoder has {LDM_GROUPS} "
            "GroupNorm groups and no setting for them"
        )
    if conditioner.arch == "custom":
        found["ldm"].append(
            "conditioner.arch=custom: LDM's FrozenOpenCLIPEmbedder builds open_clip models by name only"
        )
    if diffusion.zero_terminal_snr:
        found["ldm"].append("diffusion.zero_terminal_snr=true: LDM's schedules have no such rescaling")
    if denoiser.guidance_embed_dim:
        found["ldm"].append(
            f"denoiser.guidance_embed_dim={denoiser.guidance_embed_dim}: LDM's UNetModel has no w input"
        )
        found["diffusers_unet"].append(
            f"denoiser.guidance_embed_dim={denoiser.guidance_embed_dim}: diffusers' time_cond_proj_dim (LCM) "
            "adds a linear map of w's features to the timestep features, not an MLP to the time embedding"
        )

    if denoiser.position_embedding:
        line = "denoiser.position_embedding=true: {} has no position embedding in its transformers"
        found["ldm"].append(line.format("LDM's SpatialTransformer"))
        found["diffusers_unet"].append(line.format("diffusers' Transformer2DModel (continuous input)"))

    if denoiser.channel_mult[0] != 1:
        found["diffusers_unet"].append(
            f"denoiser.channel_mult[0]={denoiser.channel_mult[0]}: diffusers' UNet2DConditionModel makes "
            "its input conv and timestep embedding block_out_channels[0] wide, ours model_channels"
        )

    if autoencoder.z_channels != autoencoder.embed_dim:
        found["diffusers_vae"].append(
            f"autoencoder.z_channels={autoencoder.z_channels} != embed_dim={autoencoder.embed_dim}: "
            "diffusers' AutoencoderKL has one latent_channels for both"
        )
    levels = _vae_attention_levels(autoencoder)
    if levels:
        found["diffusers_vae"].append(
            f"autoencoder.attn_resolutions={autoencoder.attn_resolutions} (attention at sides {levels}): "
            "diffusers' single-file conversion of the autoencoder keeps only the middle block's attention"
        )

    if diffusion.beta_schedule == "cosine" and diffusion.cosine_s != COSINE_S_DIFFUSERS:
        found["diffusers_scheduler"].append(
            f"diffusion.cosine_s={diffusion.cosine_s}: diffusers' squaredcos_cap_v2 fixes the offset at "
            f"{COSINE_S_DIFFUSERS}"
        )
    return found


def _scale_factor(hparams: dict[str, Any], scale_factor: Optional[float]) -> float:
    """The latent scale: the argument (the checkpoint's buffer), else the config's, else 1."""
    if scale_factor is not None:
        return float(scale_factor)
    return float(hparams["diffusion"].get("scale_factor") or 1.0)


def ldm_inference_config(hparams: dict[str, Any], scale_factor: Optional[float] = None) -> dict[str, Any]:
    """The LDM/SD inference config (as ``v2-inference.yaml``) of a stage-2 checkpoint's hyper_parameters.

    Built whatever :func:`unstatable_settings` says (``cond_stage_config`` is left out for a custom
    text tower); only a config with nothing unstatable describes the model.
    """
    autoencoder, denoiser, conditioner, diffusion = _configs(hparams)
    unet: dict[str, Any] = {
        "use_checkpoint": denoiser.use_checkpoint,
        "use_fp16": False,
        "image_size": hparams["image_size"] // _downsampling(autoencoder),  # not used by LDM
        "in_channels": denoiser.in_channels,
        "out_channels": denoiser.out_channels,
        "model_channels": denoiser.model_channels,
        "attention_resolutions": list(denoiser.attention_resolutions),
        "num_res_blocks": denoiser.num_res_blocks,
        "channel_mult": list(denoiser.channel_mult),
        "dropout": denoiser.dropout,
    }
    # LDM derives the heads from whichever of the two is not -1; stating only that one keeps
    # diffusers' reading of the file right too (it takes num_heads as the head count when present).
    if denoiser.num_heads == -1:
        unet["num_head_channels"] = denoiser.num_head_channels
    else:
        unet["num_heads"] = denoiser.num_heads
        unet["num_head_channels"] = -1
    if denoiser.num_classes is not None:
        unet["num_classes"] = denoiser.num_classes
    if denoiser.disable_self_attentions is not None:
        unet["disable_self_attentions"] = list(denoiser.disable_self_attentions)
    unet.update(
        use_spatial_transformer=True,
        use_linear_in_transformer=denoiser.use_linear_in_transformer,
        transformer_depth=denoiser.transformer_depth,
        context_dim=denoiser.context_dim,
        legacy=False,
    )
    ddconfig = {
        "double_z": True,
        "z_channels": autoencoder.z_channels,
        "resolution": autoencoder.resolution,
        "in_channels": autoencoder.in_channels,
        "out_ch": autoencoder.out_channels,
        "ch": autoencoder.ch,
        "ch_mult": list(autoencoder.ch_mult),
        "num_res_blocks": autoencoder.num_res_blocks,
        "attn_resolutions": list(autoencoder.attn_resolutions),
        "dropout": autoencoder.dropout,
    }
    task = ImageConditioningConfig(**hparams.get("image_conditioning", {}))
    target, conditioning_key = LDM_MODELS[task.task]
    params: dict[str, Any] = {
        "linear_start": diffusion.linear_start,
        "linear_end": diffusion.linear_end,
        "num_timesteps_cond": 1,
        "log_every_t": 200,
        "timesteps": diffusion.num_timesteps,
        "beta_schedule": LDM_BETA_SCHEDULES[diffusion.beta_schedule],
        "parameterization": diffusion.parameterization,
        "first_stage_key": "jpg",
        "cond_stage_key": "txt",
        "image_size": hparams["image_size"] // _downsampling(autoencoder),
        "channels": autoencoder.embed_dim,
        "cond_stage_trainable": conditioner.trainable,
        "conditioning_key": conditioning_key,
        "monitor": "val/loss_simple_ema",
        "scale_factor": _scale_factor(hparams, scale_factor),
        "use_ema": False,  # the single file holds the weights to sample with in model.diffusion_model
    }
    if diffusion.beta_schedule == "cosine":
        params["cosine_s"] = diffusion.cosine_s
    if task.task == "super_resolution":  # x4-upscaling.yaml: the low-resolution input's augmentation
        params["low_scale_key"] = "lr"
        params["low_scale_config"] = {
            "target": "ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation",
            "params": {
                "noise_schedule_config": {"linear_start": NOISE_SCHEDULE[1], "linear_end": NOISE_SCHEDULE[2]},
                "max_noise_level": task.max_noise_level,
            },
        }
    params["unet_config"] = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet}
    params["first_stage_config"] = {
        "target": "ldm.models.autoencoder.AutoencoderKL",
        "params": {
            "embed_dim": autoencoder.embed_dim,
            "monitor": "val/rec_loss",
            "ddconfig": ddconfig,
            "lossconfig": {"target": "torch.nn.Identity"},
        },
    }
    if conditioner.arch != "custom":
        tag = conditioner.pretrained
        text = {
            "arch": conditioner.arch,
            # An open_clip tag as ours; null (no weights to fetch; the file has them) for none or a
            # local file, where LDM's default would fetch ViT-H-14's LAION tag.
            "version": tag if tag is not None and not Path(tag).suffix else None,
            "freeze": not conditioner.trainable,
            "layer": conditioner.layer,
        }
        params["cond_stage_config"] = {
            "target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
            "params": text,
        }
    return {
        "model": {
            "base_learning_rate": diffusion.learning_rate,
            "target": target,
            "params": params,
        }
    }


def diffusers_unet_config(hparams: dict[str, Any]) -> dict[str, Any]:
    """diffusers' ``UNet2DConditionModel`` config.json of the checkpoint's U-Net."""
    autoencoder, denoiser, _, _ = _configs(hparams)
    widths = [denoiser.model_channels * mult for mult in denoiser.channel_mult]
    attends = [2**level in denoiser.attention_resolutions for level in range(len(widths))]
    # diffusers' "attention_head_dim" is the number of heads (a naming slip it keeps for old configs).
    heads: int | list[int] = (
        [width // denoiser.num_head_channels for width in widths]
        if denoiser.num_heads == -1
        else denoiser.num_heads
    )
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": hparams["image_size"] // _downsampling(autoencoder),
        "in_channels": denoiser.in_channels,
        "out_channels": denoiser.out_channels,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
        "only_cross_attention": (
            list(denoiser.disable_self_attentions) if denoiser.disable_self_attentions is not None else False
        ),
        "block_out_channels": widths,
        "layers_per_block": denoiser.num_res_blocks,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "dropout": denoiser.dropout,
        "act_fn": "silu",
        "norm_num_groups": LDM_GROUPS,
        "norm_eps": 1e-5,
        "cross_attention_dim": denoiser.context_dim,
        "transformer_layers_per_block": denoiser.transformer_depth,
        "attention_head_dim": heads,
        "use_linear_projection": denoiser.use_linear_in_transformer,
        "upcast_attention": False,
        "resnet_time_scale_shift": "default",
        "class_embed_type": None,
        "num_class_embeds": denoiser.num_classes,  # SD x4: nn.Embedding of the noise level, added to emb
    }


def diffusers_vae_config(hparams: dict[str, Any], scale_factor: Optional[float] = None) -> dict[str, Any]:
    """diffusers' ``AutoencoderKL`` config.json of the checkpoint's autoencoder."""
    autoencoder, _, _, _ = _configs(hparams)
    levels = len(autoencoder.ch_mult)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": autoencoder.in_channels,
        "out_channels": autoencoder.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [autoencoder.ch * mult for mult in autoencoder.ch_mult],
        "layers_per_block": autoencoder.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": autoencoder.embed_dim,
        "norm_num_groups": autoencoder.norm_groups,
        "sample_size": hparams["image_size"],
        "scaling_factor": _scale_factor(hparams, scale_factor),
        "force_upcast": True,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
    }


def diffusers_scheduler_config(hparams: dict[str, Any]) -> dict[str, Any]:
    """A ``DDIMScheduler`` scheduler_config.json with the training schedule and the sampler's spacing
    (the schedule fields are those of every diffusers scheduler: ``from_config`` moves them over)."""
    _, _, _, diffusion = _configs(hparams)
    sampler = SamplerConfig(**hparams["sampler"]) if "sampler" in hparams else SamplerConfig()
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": diffusion.num_timesteps,
        "beta_start": diffusion.linear_start,
        "beta_end": diffusion.linear_end,
        "beta_schedule": DIFFUSERS_BETA_SCHEDULES[diffusion.beta_schedule],
        "prediction_type": DIFFUSERS_PREDICTION_TYPES[diffusion.parameterization],
        "rescale_betas_zero_snr": diffusion.zero_terminal_snr,
        "timestep_spacing": sampler.spacing,
        "steps_offset": 1,  # our "leading" spacing is SD's: every (T // steps)-th timestep, plus one
        "clip_sample": False,
        "set_alpha_to_one": True,  # our samplers end at sigma 0
    }


def _shortest_decimal(value: torch.Tensor) -> float:
    """The shortest decimal that rounds to the scalar `value` in its dtype (0.18215, not 0.18215000629...)."""
    exact = value.item()
    for digits in range(1, 18):
        candidate = float(f"{exact:.{digits}g}")
        if torch.tensor(candidate, dtype=value.dtype).item() == exact:
            return candidate
    return exact


def _write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, so that no half file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def config_paths(out_path: str | Path) -> dict[str, Path]:
    """{target: file} of the configs written beside the single file `out_path`."""
    out_path = Path(out_path)
    folder = out_path.with_name(f"{out_path.stem}-diffusers")
    return {"ldm": out_path.with_suffix(".yaml"), **{t: folder / p for t, p in DIFFUSERS_FILES.items()}}


def config_texts(
    hparams: dict[str, Any], out_name: str, scale_factor: Optional[float] = None
) -> dict[str, str]:
    """{target: file text} of every target, statable or not, for the single file named `out_name`."""

    def as_json(config: dict[str, Any]) -> str:
        return json.dumps(config, indent=2) + "\n"

    ldm_yaml = yaml.safe_dump(
        ldm_inference_config(hparams, scale_factor), sort_keys=False, default_flow_style=None
    )
    return {
        "ldm": f"# LDM inference config of {out_name}, written by ldm\n" + ldm_yaml,
        "diffusers_unet": as_json(diffusers_unet_config(hparams)),
        "diffusers_vae": as_json(diffusers_vae_config(hparams, scale_factor)),
        "diffusers_scheduler": as_json(diffusers_scheduler_config(hparams)),
    }


def write_configs(
    hparams: dict[str, Any], out_path: str | Path, scale_factor: Optional[float] = None
) -> list[Path]:
    """Write the configs of the single file `out_path` (see the module docstring); returns those written.

    A target with unstatable settings gets a warning naming them, and a config left there by an
    earlier export is removed, so that none describes these weights wrongly.
    """
    texts = config_texts(hparams, Path(out_path).name, scale_factor)
    unstatable = unstatable_settings(hparams)
    written = []
    for target, path in config_paths(out_path).items():
        if unstatable[target]:
            log.warning("no %s written: %s cannot state %s", path.name, target, "; ".join(unstatable[target]))
            if path.is_file():
                path.unlink()
                log.warning("removed %s of an earlier export", path)
            continue
        _write_text(path, texts[target])
        written.append(path)
    return written


def export_sd(
    checkpoint_path: str | Path,
    out_path: str | Path,
    *,
    use_ema: bool = True,
    dtype: Optional[torch.dtype] = None,
    configs: bool = True,
) -> list[Path]:
    """Write an ldm stage-2 checkpoint as an SD single file (.safetensors, or a torch file for any
    other suffix), and with `configs` its architecture beside it; returns the files written.

    The U-Net is the EMA copy when the run kept one and `use_ema`; `dtype` casts floating tensors.
    """
    checkpoint = read_checkpoint(checkpoint_path, expected_stage="diffusion")
    return export_checkpoint(checkpoint, out_path, use_ema=use_ema, dtype=dtype, configs=configs)


def export_checkpoint(
    checkpoint: dict[str, Any],
    out_path: str | Path,
    *,
    use_ema: bool = True,
    dtype: Optional[torch.dtype] = None,
    configs: bool = True,
) -> list[Path]:
    """:func:`export_sd` of a stage-2 checkpoint already in memory (``ldm_stage``, ``state_dict`` and
    ``hyper_parameters``; the text encoder's weights may be left out)."""
    state = sd_state_dict_from_ldm(checkpoint, use_ema)
    scale_factor = _shortest_decimal(state["scale_factor"])  # before any cast
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    out_path = write_tensors(state, out_path)
    log.info("wrote %d tensors in SD's layout to %s", len(state), out_path)
    if not configs:
        return [out_path]
    written = write_configs(checkpoint["hyper_parameters"], out_path, scale_factor)
    for path in written:
        log.info("wrote %s", path)
    return [out_path, *written]
