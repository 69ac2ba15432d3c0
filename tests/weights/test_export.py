"""Tests for ldm/weights/export.py: the architecture files beside an exported SD single file.

The independent reference is diffusers: its own single-file loaders read our SD file with the
exported configs, and must compute what our networks compute. The LDM yaml is checked against
the numbers of Stability's v2-inference.yaml (SD 2 base) and v1-inference.yaml (SD 1), written
here by hand.
"""

import dataclasses
import json
import logging

import pytest
import torch
import yaml

from ldm.benchmark.networks import randomize_
from ldm.config import AutoencoderConfig, ConditionerConfig, DiffusionConfig, SamplerConfig, UNetConfig
from ldm.diffusion.channel_normalization import denormalize, normalize
from ldm.diffusion.latent_diffusion import LatentDiffusion
from ldm.diffusion.schedules import alphas_cumprod_from_config
from ldm.samplers.sigmas import discrete_timesteps
from ldm.training.config_store import compose_config
from ldm.weights.export import (
    config_paths,
    diffusers_scheduler_config,
    diffusers_unet_config,
    diffusers_vae_config,
    export_sd,
    ldm_inference_config,
    unstatable_settings,
    write_configs,
)

SCALE_FACTOR = 0.7431  # not SD's 0.18215, so that the configs must carry the checkpoint's own value


def sd2_hparams(**replacements) -> dict:
    """hyper_parameters of an SD-2-shaped model: the ldm.config defaults, 512px (no network built)."""
    parts = dict(
        autoencoder=AutoencoderConfig(),
        denoiser=UNetConfig(),
        conditioner=ConditionerConfig(),
        diffusion=DiffusionConfig(scale_factor=0.18215),
        sampler=SamplerConfig(),
    )
    parts.update(replacements)
    return {**{k: dataclasses.asdict(v) for k, v in parts.items()}, "image_size": 512}


@pytest.fixture(scope="module", params=["shapes", "debug"])
def preset_checkpoint(request, tmp_path_factory):
    """(checkpoint path, LatentDiffusion) of a preset's architecture with random weights."""
    config = compose_config([] if request.param == "shapes" else [f"experiment={request.param}"])
    module = LatentDiffusion(
        autoencoder=config.autoencoder,
        denoiser=config.denoiser,
        conditioner=config.conditioner,
        diffusion=config.diffusion,
        sampler=config.sampler,
        image_size=config.data.resolution,
    )
    # Every parameter random: ours zero-initialise the U-Net's output layers, which would hide errors.
    randomize_(module.model.diffusion_model, torch.Generator().manual_seed(1))
    randomize_(module.first_stage_model, torch.Generator().manual_seed(2))
    module.scale_factor.fill_(SCALE_FACTOR)
    stats = module.channel_statistics()
    if stats is not None:  # the shapes preset normalizes latents per channel: the export folds it
        g = torch.Generator().manual_seed(4)
        stats[0].copy_(torch.randn(stats[0].shape, generator=g))
        stats[1].copy_(0.3 + 3 * torch.rand(stats[1].shape, generator=g))
    path = tmp_path_factory.mktemp(request.param) / "last.ckpt"
    hparams = module.checkpoint_hparams
    torch.save(
        {"ldm_stage": "diffusion", "state_dict": module.state_dict(), "hyper_parameters": hparams}, path
    )
    return path, module.eval()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> None:
    """max |actual - expected| <= tolerance x max |expected|: float32 rounding (measured 5e-7 to 1.4e-6)."""
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    assert scale > 0
    assert (actual - expected).abs().max().item() <= tolerance * scale


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def inputs(module: LatentDiffusion) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    side, f = module.image_size, module.first_stage_model.downsample_factor
    unet = module.model.diffusion_model
    return {
        "image": torch.rand(2, 3, side, side, generator=g) * 2 - 1,
        "latent": torch.randn(2, unet.in_channels, side // f, side // f, generator=g),
        "timesteps": torch.tensor([17, 803]),
        "context": torch.randn(2, module.cond_stage_model.context_length, unet.context_dim, generator=g),
    }


def channel_stats(module: LatentDiffusion) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's per-channel latent statistics (folded into an exported VAE), or the identity's."""
    return module.channel_statistics() or (torch.zeros(4), torch.ones(4))


def test_diffusers_single_file_loaders_compute_what_our_networks_compute(
    preset_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    diffusers = pytest.importorskip("diffusers")
    path, module = preset_checkpoint
    out = tmp_path / "model.safetensors"
    written = export_sd(path, out)
    folder = tmp_path / "model-diffusers"
    assert written == [out, folder / "unet" / "config.json", folder / "vae" / "config.json",
                       folder / "scheduler" / "scheduler_config.json"]  # fmt: skip
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    assert vae_config["norm_num_groups"] == 8 and vae_config["scaling_factor"] == SCALE_FACTOR

    common = dict(config=str(folder), local_files_only=True)
    vae = diffusers.AutoencoderKL.from_single_file(str(out), subfolder="vae", **common)
    unet = diffusers.UNet2DConditionModel.from_single_file(str(out), subfolder="unet", **common)
    assert vae.config.norm_num_groups == 8
    x = inputs(module)
    ours = module.first_stage_model
    stats = channel_stats(module)
    with torch.no_grad():
        assert_close(vae.decode(x["latent"]).sample, ours.decode(denormalize(x["latent"], *stats)))
        assert_close(vae.encode(x["image"]).latent_dist.mean, normalize(ours.encode(x["image"]).mean, *stats))
        expected = module.model.diffusion_model(x["latent"], x["timesteps"], x["context"])
        actual = unet(x["latent"], x["timesteps"], encoder_hidden_states=x["context"]).sample
    assert_close(actual, expected)


def test_the_cpu_fast_paths_compute_what_diffusers_computes(preset_checkpoint, tmp_path, monkeypatch):
    """The same agreement with every U-Net convolution on the GEMM path (ldm/denoiser/conv.py) and every
    upsampling by phase convolutions (ldm/upsampling.py), which these small presets do not reach."""
    from ldm import upsampling
    from ldm.denoiser import conv

    monkeypatch.setattr(conv, "GEMM_MIN_WEIGHTS", 1)
    monkeypatch.setattr(conv, "GEMM_MAX_PIXELS", 10**9)
    monkeypatch.setattr(upsampling, "PHASE_MIN_PIXELS", 0)
    calls = {"gemm": 0, "phases": 0}

    def counted(name, function):
        def call(*args):
            calls[name] += 1
            return function(*args)

        return call

    monkeypatch.setattr(conv, "gemm_conv2d", counted("gemm", conv.gemm_conv2d))
    monkeypatch.setattr(upsampling, "phase_upsample_conv", counted("phases", upsampling.phase_upsample_conv))
    test_diffusers_single_file_loaders_compute_what_our_networks_compute(preset_checkpoint, tmp_path, monkeypatch)
    assert calls["gemm"] > 0 and calls["phases"] > 0


def test_an_ldm_yaml_would_load_the_8_group_vae_silently_wrong(
    preset_checkpoint, tmp_path, monkeypatch, caplog
):
    """The LDM yaml that could be written (it has no groups setting) is refused, with the reason."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, module = preset_checkpoint
    out = tmp_path / "model.safetensors"
    with caplog.at_level(logging.WARNING, logger="ldm.weights.export"):
        written = export_sd(path, out)
    assert not (tmp_path / "model.yaml").exists() and out.with_suffix(".yaml") not in written
    assert "no model.yaml written" in caplog.text and "autoencoder.norm_groups=8" in caplog.text

    diffusers = pytest.importorskip("diffusers")
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    original_config = ldm_inference_config(hparams, SCALE_FACTOR)
    vae = diffusers.AutoencoderKL.from_single_file(
        str(out), original_config=original_config, local_files_only=True
    )
    assert vae.config.norm_num_groups == 32  # what any LDM-config reader builds
    x = inputs(module)
    with torch.no_grad():
        assert (
            relative_error(
                vae.decode(x["latent"]).sample,
                module.first_stage_model.decode(denormalize(x["latent"], *channel_stats(module))),
            )
            > 0.1
        )
        # The U-Net part of the same yaml is right: diffusers' own reading of it gives our outputs.
        unet = diffusers.UNet2DConditionModel.from_single_file(
            str(out), original_config=original_config, local_files_only=True
        )
        expected = module.model.diffusion_model(x["latent"], x["timesteps"], x["context"])
        assert_close(unet(x["latent"], x["timesteps"], encoder_hidden_states=x["context"]).sample, expected)


def test_ldm_yaml_of_sd2_base_is_stabilitys_v2_inference(tmp_path):
    written = write_configs(sd2_hparams(), tmp_path / "sd2.safetensors", scale_factor=0.18215)
    assert tmp_path / "sd2.yaml" in written
    model = yaml.safe_load((tmp_path / "sd2.yaml").read_text())["model"]
    assert model["target"] == "ldm.models.diffusion.ddpm.LatentDiffusion"
    params = model["params"]
    # v2-inference.yaml's numbers; beta_schedule "linear" (LDM's name for SD's sqrt-linear schedule)
    # and parameterization "eps" are LDM's defaults, which that file leaves out.
    expected = {
        "linear_start": 0.00085,
        "linear_end": 0.012,
        "num_timesteps_cond": 1,
        "log_every_t": 200,
        "timesteps": 1000,
        "beta_schedule": "linear",
        "parameterization": "eps",
        "first_stage_key": "jpg",
        "cond_stage_key": "txt",
        "image_size": 64,
        "channels": 4,
        "cond_stage_trainable": False,
        "conditioning_key": "crossattn",
        "monitor": "val/loss_simple_ema",
        "scale_factor": 0.18215,
        "use_ema": False,
    }
    assert {k: v for k, v in params.items() if not k.endswith("_config")} == expected
    unet = params["unet_config"]
    assert unet["target"] == "ldm.modules.diffusionmodules.openaimodel.UNetModel"
    # As v2-inference.yaml, except: use_checkpoint (training only) is the run's, use_fp16 false (the
    # export is float32 unless cast), image_size (unused by LDM) the latent side; dropout stated.
    assert unet["params"] == {
        "use_checkpoint": False,
        "use_fp16": False,
        "image_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "attention_resolutions": [4, 2, 1],
        "num_res_blocks": 2,
        "channel_mult": [1, 2, 4, 4],
        "dropout": 0.0,
        "num_head_channels": 64,
        "use_spatial_transformer": True,
        "use_linear_in_transformer": True,
        "transformer_depth": 1,
        "context_dim": 1024,
        "legacy": False,
    }
    first_stage = params["first_stage_config"]
    assert first_stage["target"] == "ldm.models.autoencoder.AutoencoderKL"
    assert first_stage["params"] == {
        "embed_dim": 4,
        "monitor": "val/rec_loss",
        "ddconfig": {
            "double_z": True,
            "z_channels": 4,
            "resolution": 256,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 128,
            "ch_mult": [1, 2, 4, 4],
            "num_res_blocks": 2,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
        "lossconfig": {"target": "torch.nn.Identity"},
    }
    assert params["cond_stage_config"] == {
        "target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
        "params": {
            "arch": "ViT-H-14",
            "version": "laion2b_s32b_b79k",
            "freeze": True,
            "layer": "penultimate",
        },
    }


def test_ldm_yaml_of_sd1_heads_and_conv_projections():
    """v1-inference.yaml: num_heads 8 (fixed count), 1x1-conv projections, 768-wide context."""
    denoiser = UNetConfig(num_heads=8, context_dim=768, use_linear_in_transformer=False)
    unet = ldm_inference_config(sd2_hparams(denoiser=denoiser))["model"]["params"]["unet_config"]["params"]
    assert (unet["num_heads"], unet["num_head_channels"]) == (8, -1)
    assert (unet["use_linear_in_transformer"], unet["context_dim"]) == (False, 768)
    assert diffusers_unet_config(sd2_hparams(denoiser=denoiser))["attention_head_dim"] == 8
    # SD 1.x's text encoder as ldm holds it (open_clip's ViT-L-14 with QuickGELU, weights in the file):
    # version null, since LDM's default would fetch ViT-H-14's LAION weights.
    text = ConditionerConfig(arch="ViT-L-14-quickgelu", pretrained=None, layer="last")
    cond = ldm_inference_config(sd2_hparams(conditioner=text))["model"]["params"]["cond_stage_config"]
    assert cond["params"] == {"arch": "ViT-L-14-quickgelu", "version": None, "freeze": True, "layer": "last"}


def test_diffusers_configs_of_sd2_base_are_stabilitys():
    """The numbers of stabilityai/stable-diffusion-2-base's unet, vae and scheduler configs."""
    unet = diffusers_unet_config(sd2_hparams())
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert unet["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert unet["attention_head_dim"] == [5, 10, 20, 20]  # heads per level: diffusers' naming
    assert (unet["cross_attention_dim"], unet["use_linear_projection"], unet["sample_size"]) == (
        1024,
        True,
        64,
    )
    assert (unet["layers_per_block"], unet["norm_num_groups"], unet["transformer_layers_per_block"]) == (
        2,
        32,
        1,
    )
    vae = diffusers_vae_config(sd2_hparams(), 0.18215)
    assert (
        vae["block_out_channels"] == [128, 256, 512, 512]
        and vae["down_block_types"] == ["DownEncoderBlock2D"] * 4
    )
    assert (vae["latent_channels"], vae["norm_num_groups"], vae["scaling_factor"]) == (4, 32, 0.18215)
    scheduler = diffusers_scheduler_config(sd2_hparams())
    assert {k: scheduler[k] for k in ("beta_start", "beta_end", "beta_schedule", "prediction_type")} == {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
    }
    assert scheduler["num_train_timesteps"] == 1000 and scheduler["steps_offset"] == 1


@pytest.mark.parametrize(
    "diffusion",
    [
        DiffusionConfig(),
        DiffusionConfig(beta_schedule="linear", linear_start=1e-4, linear_end=0.02, parameterization="v"),
        DiffusionConfig(beta_schedule="cosine", parameterization="x0"),
        DiffusionConfig(zero_terminal_snr=True, parameterization="v"),
    ],
)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_scheduler_config_gives_diffusers_our_schedule(diffusion, spacing):
    diffusers = pytest.importorskip("diffusers")
    hparams = sd2_hparams(diffusion=diffusion, sampler=SamplerConfig(spacing=spacing))
    scheduler = diffusers.DDIMScheduler.from_config(diffusers_scheduler_config(hparams))
    ours = alphas_cumprod_from_config(diffusion)
    assert torch.allclose(scheduler.alphas_cumprod.double(), ours, rtol=1e-5, atol=1e-7)
    assert (
        scheduler.config.prediction_type
        == {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[diffusion.parameterization]
    )
    scheduler.set_timesteps(20)
    assert torch.equal(scheduler.timesteps.long(), discrete_timesteps(1000, 20, spacing))


@pytest.mark.parametrize(
    "replacements, target, setting",
    [
        ({"autoencoder": AutoencoderConfig(norm_groups=8)}, "ldm", "autoencoder.norm_groups=8"),
        (
            {"conditioner": ConditionerConfig(arch="custom", pretrained=None)},
            "ldm",
            "conditioner.arch=custom",
        ),
        ({"diffusion": DiffusionConfig(zero_terminal_snr=True)}, "ldm", "diffusion.zero_terminal_snr"),
        ({"denoiser": UNetConfig(channel_mult=[2, 4])}, "diffusers_unet", "denoiser.channel_mult[0]=2"),
        ({"autoencoder": AutoencoderConfig(z_channels=8)}, "diffusers_vae", "z_channels=8 != embed_dim=4"),
        ({"autoencoder": AutoencoderConfig(attn_resolutions=[32])}, "diffusers_vae", "sides [32]"),
        (
            {"diffusion": DiffusionConfig(beta_schedule="cosine", cosine_s=0.02)},
            "diffusers_scheduler",
            "diffusion.cosine_s=0.02",
        ),
    ],
)
def test_each_unstatable_setting_is_named_for_its_target_only(replacements, target, setting):
    found = unstatable_settings(sd2_hparams(**replacements))
    assert len(found[target]) == 1 and setting in found[target][0]
    assert all(not reasons for t, reasons in found.items() if t != target)


def test_position_embedding_is_unstatable_for_ldm_and_diffusers_unets():
    found = unstatable_settings(sd2_hparams(denoiser=UNetConfig(position_embedding=True)))
    assert [len(found[t]) for t in ("ldm", "diffusers_unet")] == [1, 1]
    assert all("position_embedding=true" in found[t][0] for t in ("ldm", "diffusers_unet"))
    assert not found["diffusers_vae"] and not found["diffusers_scheduler"]


def test_sd2_shape_and_the_statable_variants_are_statable_everywhere():
    assert all(not reasons for reasons in unstatable_settings(sd2_hparams()).values())
    variants = [  # settings every target states: groups in diffusers, attention that never meets a level
        {"autoencoder": AutoencoderConfig(attn_resolutions=[7])},
        {"denoiser": UNetConfig(num_heads=8, use_linear_in_transformer=False, transformer_depth=2)},
        {"diffusion": DiffusionConfig(beta_schedule="cosine")},
    ]
    for replacements in variants:
        assert all(not reasons for reasons in unstatable_settings(sd2_hparams(**replacements)).values())
    assert (
        unstatable_settings(sd2_hparams(autoencoder=AutoencoderConfig(norm_groups=8)))["diffusers_vae"] == []
    )


def test_an_earlier_exports_config_that_no_longer_fits_is_removed(tmp_path):
    out = tmp_path / "model.safetensors"
    assert set(write_configs(sd2_hparams(), out)) == set(config_paths(out).values())
    written = write_configs(sd2_hparams(autoencoder=AutoencoderConfig(norm_groups=8)), out)
    assert not (tmp_path / "model.yaml").exists()
    assert set(written) == set(config_paths(out).values()) - {tmp_path / "model.yaml"}
    assert (
        json.loads((tmp_path / "model-diffusers" / "vae" / "config.json").read_text())["norm_num_groups"] == 8
    )


def test_export_without_configs_writes_the_single_file_only(preset_checkpoint, tmp_path):
    path, _ = preset_checkpoint
    out = tmp_path / "model.ckpt"
    assert export_sd(path, out, configs=False, dtype=torch.float16) == [out]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]
    state = torch.load(out, weights_only=True)["state_dict"]
    assert state["model.diffusion_model.out.2.weight"].dtype == torch.float16
