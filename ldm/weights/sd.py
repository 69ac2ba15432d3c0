"""Stable Diffusion single-file checkpoints, and SD VAE files, in and out.

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

The image-conditioned models are the same layout with a wider first convolution: SD's x4 upscaler
(``x4-upscaler-ema``: 7 input channels, a ``label_emb`` of its input's noise level, self-attention
off at three levels, a kl-f4 autoencoder; its ``low_scale_model.*`` schedule buffers are
recomputed) and the inpainting models (``512-inpainting-ema``, ``sd-v1-5-inpainting``: 9 input
channels). A text-to-image checkpoint starts an inpainting fine-tune (``diffusion.init_from``) with
the new input channels' weights zero (``widen_for_image_conditioning``), as SD 2 inpainting was made.

A guidance-distilled student's U-Net has one module SD's U-Net lacks, the guidance-scale embedding
(``model.diffusion_model.guidance_embed.*``, ``ldm.denoiser.unet``); its keys travel with the others
under the same prefix, and reading them back needs an architecture that has it: the student's own
checkpoint (``--arch RUN/checkpoints/distill-4.ckpt``), which also brings back what it was distilled for.

A standalone SD VAE file (``vae-ft-mse-840000-ema-pruned`` and the like) holds ``KLAutoencoder``'s
state dict as it is (``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``);
:func:`load_sd_vae` also takes the ``first_stage_model.*`` part of a full checkpoint. LDM's
training-only ``loss.*`` entries (LPIPS, discriminator, logvar) are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from ldm.config import (
    AutoencoderConfig,
    ConditionerConfig,
    DiffusionConfig,
    ImageConditioningConfig,
    SamplerConfig,
    UNetConfig,
)
from ldm.diffusion.channel_normalization import MEAN_KEY, STD_KEY, fold_into_autoencoder
from ldm.diffusion.scaling import choose_scale_factor
from ldm.weights.checkpoint import CheckpointError, read_checkpoint
from ldm.weights.io import WeightsError, check_state_dict, load_checked, read_tensors, write_tensors

if TYPE_CHECKING:
    from ldm.autoencoder.model import KLAutoencoder

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
VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
"""The top-level modules of the SD VAE (``KLAutoencoder``)."""
VAE_TRAINING_ONLY_PREFIX = "loss."
"""LDM's LPIPSWithDiscriminator entries in a VAE training checkpoint: not part of the VAE."""
LOW_SCALE_PREFIX = "low_scale_model."
"""SD x4's noise-augmentation schedule buffers (recomputed, ldm.conditioning.low_resolution)."""
SD_SKIPPED_PREFIXES = ("model_ema.", PREFIXES["autoencoder"] + VAE_TRAINING_ONLY_PREFIX, LOW_SCALE_PREFIX)
HF_CLIP_PREFIX = "cond_stage_model.transformer."
"""SD 1.x's text encoder (Hugging Face CLIPTextModel layout), not converted."""
SD_SCALE_FACTOR = 0.18215
"""The latent scale of SD's kl-f8 autoencoder (SD files do not store it)."""
SD_X4_SCALE_FACTOR = 0.08333
"""The latent scale of the SD x4 upscaler's kl-f4 autoencoder (its x4-upscaling.yaml)."""
INPUT_CONV = "input_blocks.0.0.weight"
"""The U-Net's first convolution, whose input channels are the latent's and the image conditioning's."""


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
    image_conditioning: ImageConditioningConfig = field(default_factory=ImageConditioningConfig)
    """The image the model is conditioned on besides the text (text-to-image: none)."""
    distillation: Optional[dict[str, Any]] = None
    """A distilled student's ``hyper_parameters["distillation"]`` (its step count, guidance range, ...)."""


def sd_image_architectures(text_to_image: dict[str, SDArchitecture]) -> dict[str, SDArchitecture]:
    """The image-conditioned presets: sd-x4-upscaler, and sd2-inpainting and sd15-inpainting (9 input
    channels, else the architectures of `text_to_image`'s sd2 and sd15)."""

    def inpainting(name: str, description: str) -> SDArchitecture:
        arch = text_to_image[name]
        denoiser = dataclasses.replace(arch.denoiser, in_channels=9, concat_channels=5)
        task = ImageConditioningConfig(task="inpainting")
        return dataclasses.replace(arch, description=description, denoiser=denoiser, image_conditioning=task)

    x4_unet = UNetConfig(  # x4-upscaling.yaml
        in_channels=7,
        concat_channels=3,
        num_classes=1000,
        model_channels=256,
        channel_mult=[1, 2, 2, 4],
        attention_resolutions=[2, 4, 8],
        num_heads=8,
        disable_self_attentions=[True, True, True, False],
    )
    return {
        "sd-x4-upscaler": SDArchitecture(
            "Stable Diffusion x4 upscaler (128 -> 512px, v-prediction, noise level as class label)",
            x4_unet,
            autoencoder=AutoencoderConfig(ch_mult=[1, 2, 4]),  # kl-f4, 4 latent channels
            diffusion=DiffusionConfig(
                scale_factor=SD_X4_SCALE_FACTOR, parameterization="v", linear_start=1e-4, linear_end=0.02
            ),
            sampler=SamplerConfig(steps=75, guidance_scale=9.0),  # diffusers' pipeline defaults
            image_conditioning=ImageConditioningConfig(task="super_resolution"),
        ),
        "sd2-inpainting": inpainting("sd2", "Stable Diffusion 2 inpainting (512px, eps; 9 input channels)"),
        "sd15-inpainting": inpainting(
            "sd15", "Stable Diffusion 1.5 inpainting (512px, eps; 9 input channels; U-Net and autoencoder)"
        ),
    }


def sd_architectures() -> dict[str, SDArchitecture]:
    """Named presets (fresh objects each call): sd2 (SD 2.x base, 512px, eps), sd2-v (768px, v), sd15,
    and the image-conditioned ones (``sd_image_architectures``)."""
    sd2_unet = UNetConfig()  # the defaults are SD 2's
    sd15_unet = UNetConfig(num_heads=8, context_dim=768, use_linear_in_transformer=False)
    # SD 1.x: OpenAI CLIP ViT-L/14 (QuickGELU), last layer; open_clip holds the same network as ViT-L-14 "openai".
    sd15_text = ConditionerConfig(arch="ViT-L-14-quickgelu", pretrained=None, layer="last")
    text_to_image = {
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
    return {**text_to_image, **sd_image_architectures(text_to_image)}


def get_sd_architecture(name: str) -> SDArchitecture:
    """The preset called `name`, the architecture of a run's resolved config (a path to config.yaml),
    or that of an ldm stage-2 checkpoint (a path to a .ckpt)."""
    presets = sd_architectures()
    if name in presets:
        return presets[name]
    if name.endswith((".yaml", ".yml")):
        return sd_architecture_from_config(name)
    if name.endswith(".ckpt"):
        return sd_architecture_from_checkpoint(name)
    raise ValueError(
        f"unknown SD architecture '{name}'; available: {', '.join(presets)}, a config.yaml or an ldm .ckpt"
    )


def sd_architecture_from_checkpoint(path: str | Path) -> SDArchitecture:
    """The architecture an ldm stage-2 checkpoint was built with (its hyper_parameters), a distilled
    student's included."""
    hparams = read_checkpoint(path, expected_stage="diffusion")["hyper_parameters"]
    return SDArchitecture(
        f"from {path}",
        UNetConfig(**hparams["denoiser"]),
        AutoencoderConfig(**hparams["autoencoder"]),
        ConditionerConfig(**hparams["conditioner"]),
        DiffusionConfig(**hparams["diffusion"]),
        hparams["image_size"],
        SamplerConfig(**hparams["sampler"]),
        ImageConditioningConfig(**hparams.get("image_conditioning", {})),
        hparams.get("distillation"),
    )


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
    if config.stage == "distill":
        raise ValueError(
            f"{path} is a distillation run's config, whose student is built from its teacher: give the "
            "student's checkpoint instead (--arch <run>/checkpoints/last.ckpt)"
        )
    return SDArchitecture(
        f"from {path}",
        config.denoiser,
        config.autoencoder,
        config.conditioner,
        config.diffusion,
        config.data.resolution,
        config.sampler,
        config.image_conditioning,
    )


def split_sd_state_dict(state: dict[str, torch.Tensor], use_ema: bool = True) -> dict[str, Any]:
    """{'denoiser', 'autoencoder', 'conditioner': prefix-free state dicts, 'scale_factor': float or None,
    'skipped': keys not used}; the U-Net comes from ldm's EMA copy when present and `use_ema`. An ldm
    model's per-channel latent normalization is folded into the autoencoder's weights.

    Raises CheckpointError on keys that belong to no known part.
    """
    parts: dict[str, Any] = {name: {} for name in PREFIXES}
    ema: dict[str, torch.Tensor] = {}
    channel_stats: dict[str, torch.Tensor] = {}
    skipped, unknown = [], []
    for key, value in state.items():
        name = next((n for n, p in PREFIXES.items() if key.startswith(p)), None)
        if name is not None:
            parts[name][key[len(PREFIXES[name]) :]] = value
        elif key.startswith(EMA_PREFIX):
            ema[key[len(EMA_PREFIX) :]] = value
        elif key == "scale_factor":
            parts["scale_factor"] = float(value)
        elif key in (MEAN_KEY, STD_KEY):
            channel_stats[key] = value
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
    if channel_stats:  # an ldm model that normalizes latents per channel: SD's layout has no place for it
        parts["autoencoder"] = fold_into_autoencoder(parts["autoencoder"], channel_stats[MEAN_KEY], channel_stats[STD_KEY])
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
    from ldm.conditioning.text import OpenCLIPTextEncoder, without_pretrained
    from ldm.denoiser.unet import UNetModel

    conditioner = without_pretrained(arch.conditioner)
    with torch.device("meta"):
        networks: dict[str, nn.Module] = {
            "denoiser": UNetModel.from_config(arch.denoiser),
            "autoencoder": KLAutoencoder.from_config(arch.autoencoder),
            "conditioner": OpenCLIPTextEncoder(conditioner).model,
        }
    return {PREFIXES[n]: {k: v.shape for k, v in m.state_dict().items()} for n, m in networks.items()}


def does_not_fit(name: str) -> str:
    """The beginning of the error for part `name`'s weights that do not fit the architecture."""
    return f"{PREFIXES[name]}* does not fit the architecture"


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
    from ldm.conditioning.text import without_pretrained

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
        check_state_dict(parts[name], shapes[prefix], does_not_fit(name))
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
    diffusion = dataclasses.replace(  # an SD file scales latents by one factor (any normalization is folded in)
        arch.diffusion, scale_factor=float(scale), latent_normalization="scale", ema=False, init_from=None
    )
    hyper_parameters = {
        "autoencoder": dataclasses.asdict(arch.autoencoder),
        "denoiser": dataclasses.asdict(arch.denoiser),
        "conditioner": dataclasses.asdict(without_pretrained(arch.conditioner)),
        "diffusion": dataclasses.asdict(diffusion),
        "sampler": dataclasses.asdict(sampler or arch.sampler),
        "image_size": arch.image_size,
        "image_conditioning": dataclasses.asdict(arch.image_conditioning),
    }
    if arch.distillation is not None:
        hyper_parameters["distillation"] = dict(arch.distillation)
    return {
        "ldm_stage": "diffusion",
        "global_step": 0,
        "state_dict": state_dict,
        "hyper_parameters": hyper_parameters,
    }


def load_part(module: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    """Load part `name` (a prefix-free state dict) into `module` strictly, with a one-line error."""
    load_checked(module, state, does_not_fit(name))


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
    unet = module.model.diffusion_model
    load_part(unet, "denoiser", widen_for_image_conditioning(parts["denoiser"], unet))
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


def widen_for_image_conditioning(state: dict[str, torch.Tensor], unet: nn.Module) -> dict[str, torch.Tensor]:
    """A U-Net state dict with fewer input channels than `unet` (a text-to-image model's, to start an
    image-conditioned one), widened to fit: the new input channels' weights, and a class embedding
    it lacks, are zero, so that the network starts computing what the text-to-image one did whatever
    the image conditioning holds (SD 2 inpainting's initialisation). Any other state is returned as is."""
    ours, theirs = unet.state_dict(), state.get(INPUT_CONV)
    if INPUT_CONV not in ours or theirs is None or theirs.ndim != 4:
        return state
    wanted = ours[INPUT_CONV].shape  # (out, in, 3, 3)
    if theirs.shape[1] >= wanted[1] or (theirs.shape[0], *theirs.shape[2:]) != (wanted[0], *wanted[2:]):
        return state
    widened = torch.zeros(wanted, dtype=theirs.dtype)
    widened[:, : theirs.shape[1]] = theirs  # channels: the latent's first, then the image conditioning's
    state = {**state, INPUT_CONV: widened}
    new = [f"{INPUT_CONV} (input channels {theirs.shape[1]} -> {wanted[1]})"]
    if "label_emb.weight" in ours and "label_emb.weight" not in state:
        state["label_emb.weight"] = torch.zeros_like(ours["label_emb.weight"])
        new.append("label_emb.weight")
    log.info("initial U-Net widened for image conditioning, new weights zero: %s", ", ".join(new))
    return state


def sd_vae_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE's own entries of a flat state dict: standalone, or under ``first_stage_model.``."""
    prefix = PREFIXES["autoencoder"]
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    else:
        # A standalone file may hold other top-level entries (a stray "model_ema.decay", ...).
        state = {k: v for k, v in state.items() if k.startswith(VAE_PREFIXES)}
    return {k: v for k, v in state.items() if not k.startswith(VAE_TRAINING_ONLY_PREFIX)}


def load_sd_vae(path: str | Path, config: AutoencoderConfig) -> KLAutoencoder:
    """A ``KLAutoencoder`` of `config` with the SD VAE weights at `path` (.ckpt or .safetensors), eval mode."""
    from ldm.autoencoder.model import KLAutoencoder

    state = sd_vae_state_dict(read_tensors(path))
    if not state:
        raise WeightsError(
            f"{path} holds no SD VAE weights (no encoder.*/decoder.* or first_stage_model.* keys)"
        )
    model = KLAutoencoder.from_config(config)
    load_checked(model, state, "the VAE weights do not fit the configured autoencoder")
    return model.eval()


def save_sd_vae(model: KLAutoencoder, path: str | Path) -> Path:
    """Write the VAE as a standalone SD VAE file: .safetensors, or a torch file ``{"state_dict": ...}``."""
    return write_tensors(model.state_dict(), path)
