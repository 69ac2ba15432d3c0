"""Side by side with diffusers: our U-Net and autoencoder against diffusers' ``UNet2DConditionModel`` and
``AutoencoderKL`` with the same architecture and weights, timed in the same process.

The networks are written in SD's single-file layout with their diffusers configs
(``ldm.weights.export``) and read back by diffusers' own single-file loaders, as a user would load
them. Before anything is timed, both compute the same inputs in float32 (TF32 off) and must agree
to a relative error below 1e-4 (:data:`AGREEMENT_TOLERANCE`); otherwise the run stops with a
``DisagreementError``, since a speed ratio of two different computations means nothing. Then
ours and theirs run in alternating rounds (``ldm.benchmark.timing``) with the same settings
(device, autocast, memory format, compile, attention, gradient checkpointing), and the ratio of
the medians is reported: above 1, ours is faster.

What each side runs: the training step is the same objective, inputs and loss around each U-Net;
ours updates with training's fused AdamW, theirs with ``torch.optim.AdamW`` as diffusers' training
examples construct it (PyTorch's default implementation). Sampling is the same sampler and guidance
(``Text2Image.denoise``) around each U-Net, wrapped in the same denoiser, so only the networks
differ. diffusers is a benchmark and test dependency only (the ``bench`` extra), imported here.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from ldm.benchmark.autoencoder import autoencoder_cases, autoencoder_inputs, our_autoencoder_cases
from ldm.benchmark.networks import BenchNetworks
from ldm.benchmark.report import Measurement, Quantity
from ldm.benchmark.sampling import GuidedSampling, sampling_case
from ldm.benchmark.settings import BenchSettings
from ldm.benchmark.timing import median, time_rounds
from ldm.benchmark.training import training_step
from ldm.config import DiffusionConfig, SamplerConfig
from ldm.diffusion.parametrization import DiscreteDenoiser
from ldm.diffusion.schedules import alphas_cumprod_from_config
from ldm.optim import adamw
from ldm.weights.export import config_paths, export_checkpoint, unstatable_settings
from ldm.weights.sd import PREFIXES

log = logging.getLogger(__name__)

AGREEMENT_TOLERANCE = 1e-4
"""Largest relative error (L2 norm of the difference over the norm of ours) accepted in float32."""


class DisagreementError(RuntimeError):
    """diffusers' networks compute something else than ours: their timings cannot be compared."""


def import_diffusers() -> ModuleType:
    """The diffusers package, or a one-line error saying how to install it."""
    try:
        import diffusers
    except ImportError as e:
        raise ValueError(
            "bench.compare=diffusers needs the diffusers package: pip install 'ldm[bench]'"
        ) from e
    return diffusers


class DiffusersUNet(nn.Module):
    """diffusers' UNet2DConditionModel called as ours: (x, timesteps, context) -> the network's output."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(x, timesteps, encoder_hidden_states=context, return_dict=False)[0]


@dataclass
class DiffusersNetworks:
    """diffusers' U-Net (eager, and as it is called: compiled when compiling) and autoencoder."""

    unet: nn.Module
    vae: nn.Module
    network: DiffusersUNet


def export_for_diffusers(networks: BenchNetworks, out_path: Path) -> Path:
    """Write the U-Net and autoencoder as an SD single file with diffusers' configs beside it; returns it."""
    unstatable = unstatable_settings(networks.hparams)
    reasons = unstatable["diffusers_unet"] + unstatable["diffusers_vae"]
    if reasons:
        raise ValueError(f"diffusers cannot build these networks: {'; '.join(reasons)}")
    state = {PREFIXES["denoiser"] + k: v for k, v in networks.unet.state_dict().items()}
    state.update({PREFIXES["autoencoder"] + k: v for k, v in networks.autoencoder.state_dict().items()})
    state["scale_factor"] = torch.tensor(networks.scale_factor)
    checkpoint = {"ldm_stage": "diffusion", "state_dict": state, "hyper_parameters": networks.hparams}
    return export_checkpoint(checkpoint, out_path)[0]


def load_diffusers(path: Path) -> DiffusersNetworks:
    """diffusers' U-Net and autoencoder from an SD single file and the configs exported beside it."""
    diffusers = import_diffusers()
    folder = config_paths(path)["diffusers_unet"].parent.parent
    common = dict(config=str(folder), local_files_only=True)
    unet = diffusers.UNet2DConditionModel.from_single_file(str(path), subfolder="unet", **common)
    vae = diffusers.AutoencoderKL.from_single_file(str(path), subfolder="vae", **common)
    return DiffusersNetworks(unet=unet, vae=vae.requires_grad_(False).eval(), network=DiffusersUNet(unet))


def diffusers_networks(networks: BenchNetworks) -> DiffusersNetworks:
    """Our networks' export, loaded by diffusers (through a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="ldm-bench-") as folder:
        return load_diffusers(export_for_diffusers(networks, Path(folder) / "model.safetensors"))


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Within the block float32 matrix products and convolutions round as float32 (no TF32)."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (L2 over all elements)."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def agreement_errors(
    networks: BenchNetworks, theirs: DiffusersNetworks, settings: BenchSettings
) -> dict[str, float]:
    """Relative errors of diffusers' U-Net outputs, decoded images and posterior means against ours (fp32)."""
    generator = torch.Generator().manual_seed(1)
    images, latents = autoencoder_inputs(networks, settings, 2, seed=1)
    latents, images = latents.contiguous(), images.contiguous()
    num_timesteps = networks.objective.num_timesteps
    timesteps = torch.tensor([num_timesteps // 50, num_timesteps * 4 // 5], device=settings.device)
    context = torch.randn(2, networks.context_length, networks.context_dim, generator=generator).to(
        settings.device
    )
    networks.unet.eval()
    theirs.unet.eval()
    with torch.no_grad(), full_float32():
        return {
            "unet": relative_error(
                theirs.network(latents, timesteps, context), networks.unet(latents, timesteps, context)
            ),
            "decode": relative_error(theirs.vae.decode(latents).sample, networks.autoencoder.decode(latents)),
            "encode": relative_error(
                theirs.vae.encode(images).latent_dist.mean, networks.autoencoder.encode(images).mean
            ),
        }


def check_agreement(errors: dict[str, float], tolerance: float = AGREEMENT_TOLERANCE) -> Measurement:
    """The errors as a measurement; raises DisagreementError when one is not below `tolerance` (or is NaN)."""
    bad = {name: error for name, error in errors.items() if not error < tolerance}
    if bad:
        found = ", ".join(f"{name} {error:.3g}" for name, error in bad.items())
        raise DisagreementError(
            f"diffusers' networks do not compute what ours compute (relative errors {found}, tolerance "
            f"{tolerance:g} in float32): their timings would compare different computations"
        )
    metrics = {name: Quantity(error, "relative error") for name, error in errors.items()}
    return Measurement("compare", "agreement (float32)", 2, metrics)


def prepare_diffusers(theirs: DiffusersNetworks, networks: BenchNetworks, settings: BenchSettings) -> None:
    """The same device, memory format, attention, gradient checkpointing and compilation as ours."""
    for module in (theirs.unet, theirs.vae):
        module.to(settings.device, memory_format=settings.memory_format())
    if networks.hparams["denoiser"]["use_checkpoint"]:
        theirs.unet.enable_gradient_checkpointing()
    if settings.attention == "math":
        from diffusers.models.attention_processor import AttnProcessor

        theirs.unet.set_attn_processor(AttnProcessor())
    elif settings.attention == "xformers":
        try:
            theirs.unet.enable_xformers_memory_efficient_attention()
        except (ImportError, ValueError) as e:  # ours falls back to sdpa the same way
            log.warning("diffusers' U-Net keeps SDPA attention: xformers unavailable (%s)", e)
    if settings.compile:
        theirs.network.unet = torch.compile(theirs.unet)
        theirs.vae.encoder = torch.compile(theirs.vae.encoder)
        theirs.vae.decoder = torch.compile(theirs.vae.decoder)


def paired(
    case: str,
    batch_size: int,
    cases: dict[str, Callable[[], object]],
    work: float,
    unit: str,
    settings: BenchSettings,
    notes: str = "",
) -> Measurement:
    """Ours and theirs in alternating rounds: `work` per run as a rate in `unit`, and ours/theirs."""
    rounds = time_rounds(cases, rounds=settings.rounds, warmup=settings.warmup, device=settings.device)
    ours, theirs = median(rounds["ours"]), median(rounds["theirs"])
    metrics = {
        "ours": Quantity(work / ours, unit),
        "theirs": Quantity(work / theirs, unit),
        "ratio": Quantity(theirs / ours, "ours/theirs"),
        "ours_seconds": Quantity(ours, "s"),
        "theirs_seconds": Quantity(theirs, "s"),
    }
    return Measurement("compare", case, batch_size, metrics, notes)


def compare_training(
    networks: BenchNetworks, theirs: DiffusersNetworks, settings: BenchSettings, batch_size: int
) -> Measurement:
    """Training steps per second, ours (fused AdamW) against theirs (torch.optim.AdamW's default), or
    forward, loss and backward alone with ``compare_optimizer`` off."""
    networks.unet.train()
    theirs.unet.train()
    ours_parameters, their_parameters = list(networks.unet.parameters()), list(theirs.unet.parameters())
    if settings.compare_optimizer:
        diffusion = networks.hparams["diffusion"]
        lr, decay = diffusion["learning_rate"], diffusion["weight_decay"]
        ours_optimizer = adamw(ours_parameters, lr=lr, weight_decay=decay)
        their_optimizer = torch.optim.AdamW(their_parameters, lr=lr, weight_decay=decay)
        case = "unet step"
        notes = "optimizers: ours fused AdamW (ldm.optim.adamw), theirs torch.optim.AdamW (default implementation)"
    else:
        ours_optimizer = their_optimizer = None
        case = "unet forward+backward"
        notes = "no optimizer update (bench.compare_optimizer=false): forward, loss and backward only"
    cases = {
        "ours": training_step(
            networks.denoiser.diffusion_model, networks, settings, batch_size, ours_optimizer, ours_parameters
        ),
        "theirs": training_step(
            theirs.network, networks, settings, batch_size, their_optimizer, their_parameters
        ),
    }
    return paired(case, batch_size, cases, batch_size, "samples/s", settings, notes)


def compare_sampling(
    networks: BenchNetworks,
    theirs: DiffusersNetworks,
    settings: BenchSettings,
    name: str,
    sampler: SamplerConfig,
    batch_size: int,
) -> Measurement:
    """Guided sampler steps per second with our U-Net and with theirs, in the same denoiser and sampler."""
    cases = sampling_cases(networks, theirs, settings, sampler, batch_size)
    case = f"{name} x{sampler.steps}, guidance {sampler.guidance_scale:g}"
    return paired(case, batch_size, cases, sampler.steps, "it/s", settings)


def sampling_cases(
    networks: BenchNetworks,
    theirs: DiffusersNetworks,
    settings: BenchSettings,
    sampler: SamplerConfig,
    batch_size: int,
) -> dict[str, GuidedSampling]:
    """Guided sampling runs of our U-Net ("ours") and theirs ("theirs") in the same denoiser and sampler."""
    theirs.unet.eval()
    alphas_cumprod = alphas_cumprod_from_config(DiffusionConfig(**networks.hparams["diffusion"]))
    their_denoiser = DiscreteDenoiser(theirs.network, alphas_cumprod, networks.denoiser.parameterization)
    return {
        "ours": sampling_case(networks, settings, sampler, batch_size),
        "theirs": GuidedSampling(
            their_denoiser.to(settings.device), networks.autoencoder, sampler, networks, settings, batch_size
        ),
    }


def compare_autoencoder(
    networks: BenchNetworks, theirs: DiffusersNetworks, settings: BenchSettings, batch_size: int
) -> list[Measurement]:
    """Images per second of decoding and of encoding, ours against theirs."""
    ours = our_autoencoder_cases(networks, settings, batch_size)
    vae = theirs.vae
    their_cases = autoencoder_cases(
        lambda x: vae.encode(x).latent_dist.mean,
        lambda z: vae.decode(z).sample,
        *autoencoder_inputs(networks, settings, batch_size),
        settings,
    )
    return [
        paired(
            f"vae {name}",
            batch_size,
            {"ours": ours[name], "theirs": their_cases[name]},
            batch_size,
            "images/s",
            settings,
        )
        for name in ("decode", "encode")
    ]
