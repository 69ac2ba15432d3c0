"""SD single-file checkpoints in and out (ldm/weights/sd.py), checked against diffusers where it is installed."""

import dataclasses
import json

import pytest
import torch

from ldm.config import DiffusionConfig, ImageConditioningConfig
from ldm.pipeline import Text2Image
from ldm.training.diffusion_module import LatentDiffusionModule
from ldm.weights.checkpoint import CheckpointError, load_latent_diffusion
from ldm.weights.export import export_checkpoint
from ldm.weights.io import read_tensors, write_tensors
from ldm.weights.sd import (
    SDArchitecture,
    expected_shapes,
    get_sd_architecture,
    ldm_checkpoint_from_sd,
    load_initial_weights,
    sd_state_dict_from_ldm,
)
from tests.conftest import tiny_module_configs


def tiny_arch() -> SDArchitecture:
    c = tiny_module_configs()
    return SDArchitecture("tiny", c["denoiser"], c["autoencoder"], c["conditioner"], c["diffusion"], 32)


def tiny_module(seed: int = 0, **diffusion) -> LatentDiffusionModule:
    configs = tiny_module_configs()
    configs["diffusion"] = DiffusionConfig(max_steps=10, **diffusion)
    torch.manual_seed(seed)
    module = LatentDiffusionModule(**configs).eval()
    with torch.no_grad():  # make every path, the zero-initialised ones too, non-trivial
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module.scale_factor.fill_(0.7)
    return module


def as_checkpoint(module: LatentDiffusionModule) -> dict:
    return {
        "ldm_stage": "diffusion",
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
    }


def meta_sd_state(arch: SDArchitecture) -> dict[str, torch.Tensor]:
    """A full SD state dict of `arch` with meta tensors (shapes only)."""
    return {
        prefix + k: torch.empty(shape, device="meta")
        for prefix, shapes in expected_shapes(arch).items()
        for k, shape in shapes.items()
    }


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_round_trip_through_the_sd_layout_samples_identically(tmp_path, suffix):
    module = tiny_module(ema=True)
    with torch.no_grad():
        for p in module.model.diffusion_model.parameters():  # the last weights move away from the EMA
            p.add_(0.01)
    sd = sd_state_dict_from_ldm(as_checkpoint(module))
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.model.")
    assert all(k.startswith(prefixes) for k in sd if k != "scale_factor")
    assert sd["scale_factor"].item() == pytest.approx(0.7)
    ema = module.model_ema.module.state_dict()
    assert all(torch.equal(sd["model.diffusion_model." + k], v) for k, v in ema.items())
    raw = sd_state_dict_from_ldm(as_checkpoint(module), use_ema=False)
    assert torch.equal(raw["model.diffusion_model.out.2.weight"], module.model.diffusion_model.out[2].weight)

    path = write_tensors(sd, tmp_path / f"model{suffix}")
    state = read_tensors(path)
    assert state.keys() == sd.keys()
    checkpoint = ldm_checkpoint_from_sd(state, tiny_arch(), sampler=tiny_module_configs()["sampler"])
    torch.save(checkpoint, tmp_path / "converted.ckpt")
    converted = load_latent_diffusion(tmp_path / "converted.ckpt")
    assert converted.scale_factor.item() == pytest.approx(0.7)
    with module.ema_scope():
        expected = Text2Image.from_module(module)(["a red circle"], [7])
    assert torch.equal(Text2Image.from_module(converted)(["a red circle"], [7]), expected)


@pytest.mark.parametrize("name,unet_params", [("sd2", 865_910_724), ("sd15", 859_520_964)])
def test_sd_architectures_load_and_save_with_no_missing_or_unexpected_keys(name, unet_params):
    arch = get_sd_architecture(name)
    shapes = expected_shapes(arch)
    unet = shapes["model.diffusion_model."]
    assert len(unet) == 686 and sum(torch.Size(s).numel() for s in unet.values()) == unet_params
    state = meta_sd_state(arch)
    if name == "sd15":
        with pytest.raises(CheckpointError, match="no cond_stage_model.model"):
            ldm_checkpoint_from_sd({k: v for k, v in state.items() if "cond_stage" not in k}, arch)
    checkpoint = ldm_checkpoint_from_sd(state, arch)  # raises on any missing, unexpected or misshapen key
    assert checkpoint["state_dict"].keys() == state.keys() | {"scale_factor"}
    assert checkpoint["hyper_parameters"]["diffusion"]["scale_factor"] == 0.18215
    back = sd_state_dict_from_ldm(checkpoint)
    assert back.keys() == state.keys() | {"scale_factor"}


def test_sd2_text_encoder_keys_are_open_clips():
    keys = expected_shapes(get_sd_architecture("sd2"))["cond_stage_model.model."]
    assert keys["transformer.resblocks.22.attn.in_proj_weight"] == (3072, 1024)  # SD 2: ViT-H-14, 24 layers
    assert keys["positional_embedding"] == (77, 1024) and "text_projection" in keys
    assert not any(k.startswith("visual.") for k in keys)


def test_mismatches_and_sd1_text_encoder_are_reported():
    sd2, sd15 = get_sd_architecture("sd2"), meta_sd_state(get_sd_architecture("sd15"))
    with pytest.raises(
        CheckpointError, match=r"model.diffusion_model.\* does not fit the architecture: .*shape mismatches"
    ):
        ldm_checkpoint_from_sd(
            {**meta_sd_state(sd2), **{k: v for k, v in sd15.items() if "diffusion_model" in k}}, sd2
        )
    hf = {k: v for k, v in sd15.items() if not k.startswith("cond_stage_model.")}
    hf["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.empty(768, device="meta")
    hf["betas"] = torch.empty(1000, device="meta")  # LDM's schedule buffers are skipped
    with pytest.raises(CheckpointError, match="SD 1.x's Hugging Face CLIP text encoder"):
        ldm_checkpoint_from_sd(hf, "sd15")
    with pytest.raises(CheckpointError, match="belong to no part"):
        ldm_checkpoint_from_sd({**meta_sd_state(sd2), "something.else": torch.zeros(1)}, sd2)
    with pytest.raises(ValueError, match="unknown SD architecture 'sd3'; available: sd2, sd2-v, sd15"):
        get_sd_architecture("sd3")


def test_initial_weights_load_strictly_and_restart_the_ema():
    source = tiny_module(seed=1)
    state = sd_state_dict_from_ldm(as_checkpoint(source))
    target = tiny_module(seed=2, ema=True)
    assert load_initial_weights(target, state) == ["denoiser", "autoencoder", "conditioner"]
    loaded = target.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value) or key == "scale_factor", key
    assert all(
        torch.equal(a, b)
        for a, b in zip(target.model_ema.module.parameters(), source.model.diffusion_model.parameters())
    )
    only_unet = {k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    assert load_initial_weights(tiny_module(seed=3), only_unet) == ["denoiser"]
    wrong = {**only_unet, "model.diffusion_model.out.2.weight": torch.zeros(4, 32, 1, 1)}
    with pytest.raises(CheckpointError, match="shape mismatches, e.g. out.2.weight"):
        load_initial_weights(tiny_module(), wrong)


# --- Agreement with diffusers, an independent implementation of the SD architecture ---------------------------

DIFFUSERS_TINY_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 64),
    layers_per_block=2,
    attention_head_dim=(2, 4, 4),  # diffusers' SD 2 configs give the head count here: channels / 16
    cross_attention_dim=32,
    use_linear_projection=True,
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)
DIFFUSERS_TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=32,
)
DIFFUSERS_SD2_UNET = dict(
    sample_size=64,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
)


def _diffusers():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders import single_file_utils

    return diffusers, single_file_utils


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def sd2_style_module(
    image_conditioning: ImageConditioningConfig | None = None, **denoiser
) -> LatentDiffusionModule:
    """A tiny SD-2-style model: 3 levels, attention on the first two, linear projections, 2 res blocks
    (or the `denoiser` fields given), every weight random."""
    configs = tiny_module_configs()
    unet = dict(model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=2, attention_resolutions=[1, 2],
                num_head_channels=16, context_dim=32)  # fmt: skip
    configs["denoiser"] = dataclasses.replace(configs["denoiser"], **{**unet, **denoiser})
    configs["autoencoder"] = dataclasses.replace(configs["autoencoder"], norm_groups=32)
    torch.manual_seed(0)
    module = LatentDiffusionModule(**configs, image_conditioning=image_conditioning).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def test_exported_unet_and_autoencoder_match_diffusers(tmp_path):
    diffusers, single_file_utils = _diffusers()
    module = sd2_style_module()
    path = write_tensors(sd_state_dict_from_ldm(as_checkpoint(module)), tmp_path / "tiny-sd2.safetensors")

    unet = diffusers.UNet2DConditionModel(**DIFFUSERS_TINY_UNET).eval()
    state = single_file_utils.convert_ldm_unet_checkpoint(read_tensors(path), unet.config)
    unet.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        ours = module.model.diffusion_model(x, t, context)
        theirs = unet(x, t, encoder_hidden_states=context).sample
    assert ours.abs().mean() > 0.1
    assert _relative_error(ours, theirs) <= 1e-5

    vae = diffusers.AutoencoderKL(**DIFFUSERS_TINY_VAE).eval()
    state = single_file_utils.convert_ldm_vae_checkpoint(read_tensors(path), vae.config)
    vae.load_state_dict(state, strict=True)
    images = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    z = torch.randn(2, 4, 16, 16, generator=g)
    with torch.no_grad():
        ours_posterior, theirs_posterior = (
            module.first_stage_model.encode(images),
            vae.encode(images).latent_dist,
        )
        decoded, theirs_decoded = module.first_stage_model.decode(z), vae.decode(z).sample
    assert _relative_error(ours_posterior.mean, theirs_posterior.mean) <= 1e-5
    assert _relative_error(ours_posterior.logvar, theirs_posterior.logvar) <= 1e-5
    assert _relative_error(decoded, theirs_decoded) <= 1e-5


def test_full_size_sd2_layout_is_what_diffusers_converts():
    # Every key of our SD 2 U-Net and kl-f8 autoencoder lands on a diffusers parameter of the right shape.
    diffusers, single_file_utils = _diffusers()
    shapes = expected_shapes(get_sd_architecture("sd2"))
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**DIFFUSERS_SD2_UNET)
        vae = diffusers.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
        )
    for model, prefix, convert in [
        (unet, "model.diffusion_model.", single_file_utils.convert_ldm_unet_checkpoint),
        (vae, "first_stage_model.", single_file_utils.convert_ldm_vae_checkpoint),
    ]:
        ours = {prefix + k: torch.empty(s, device="meta") for k, s in shapes[prefix].items()}
        converted = {k: tuple(v.shape) for k, v in convert(ours, model.config).items()}
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert converted == expected
        assert sum(torch.Size(s).numel() for s in shapes[prefix].values()) == sum(
            p.numel() for p in model.parameters()
        )


# --- Image-conditioned layouts: SD x4 upscaler and SD inpainting -------------------------------------------

# diffusers' UNet2DConditionModel configs of the released models (unet/config.json of
# stabilityai/stable-diffusion-x4-upscaler and stabilityai/stable-diffusion-2-inpainting), written by hand.
DIFFUSERS_X4_UNET = dict(
    sample_size=128,
    in_channels=7,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(256, 512, 512, 1024),
    attention_head_dim=8,
    cross_attention_dim=1024,
    use_linear_projection=True,
    num_class_embeds=1000,
    only_cross_attention=(True, True, True, False),
)
DIFFUSERS_SD2_INPAINTING_UNET = {**DIFFUSERS_SD2_UNET, "in_channels": 9}


@pytest.mark.parametrize("name,diffusers_config", [
    ("sd-x4-upscaler", DIFFUSERS_X4_UNET), ("sd2-inpainting", DIFFUSERS_SD2_INPAINTING_UNET),
])  # fmt: skip
def test_full_size_image_conditioned_layouts_are_what_diffusers_converts(name, diffusers_config):
    """Every key of the released layouts lands on a diffusers parameter of the right shape, and a file
    of the layout (with SD x4's low_scale_model.* schedule buffers) converts both ways."""
    diffusers, single_file_utils = _diffusers()
    arch = get_sd_architecture(name)
    prefix = "model.diffusion_model."
    shapes = expected_shapes(arch)[prefix]
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**diffusers_config)
    ours = {prefix + k: torch.empty(s, device="meta") for k, s in shapes.items()}
    converted = single_file_utils.convert_ldm_unet_checkpoint(ours, unet.config)
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert sum(torch.Size(s).numel() for s in shapes.values()) == sum(p.numel() for p in unet.parameters())

    state = meta_sd_state(arch)
    if name == "sd-x4-upscaler":
        state["low_scale_model.alphas_cumprod"] = torch.empty(1000, device="meta")
    checkpoint = ldm_checkpoint_from_sd(state, arch)
    assert checkpoint["hyper_parameters"]["image_conditioning"]["task"] == arch.image_conditioning.task
    exported = sd_state_dict_from_ldm(checkpoint).keys()
    assert exported == (state.keys() - {"low_scale_model.alphas_cumprod"}) | {"scale_factor"}


def image_conditioned_module(task: str) -> LatentDiffusionModule:
    """A tiny model of an SD image-conditioned layout, every weight random: super_resolution as SD x4 (class
    embedding, fixed head count, self-attention off at a level; 4 + 3 channels in), inpainting 4 + 5 in."""
    if task == "inpainting":
        return sd2_style_module(ImageConditioningConfig(task=task), in_channels=9, concat_channels=5)
    return sd2_style_module(
        ImageConditioningConfig(task=task, upscale=2),  # the tiny autoencoder's factor
        in_channels=7,
        concat_channels=3,
        num_classes=1000,
        attention_resolutions=[2, 4],
        num_heads=2,
        disable_self_attentions=[True, True, False],
    )


@pytest.mark.parametrize("task", ["super_resolution", "inpainting"])
def test_exported_image_conditioned_unet_computes_what_diffusers_loads_from_the_file(
    task, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    diffusers, _ = _diffusers()
    module = image_conditioned_module(task)
    out = tmp_path / "model.safetensors"
    export_checkpoint(as_checkpoint(module), out)
    folder = tmp_path / "model-diffusers"
    config = json.loads((folder / "unet" / "config.json").read_text())
    unet = diffusers.UNet2DConditionModel.from_single_file(
        str(out), config=str(folder), subfolder="unet", local_files_only=True
    ).eval()
    g = torch.Generator().manual_seed(1)
    channels = module.model.diffusion_model.in_channels
    x, context = torch.randn(2, channels, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([10, 700])
    labels = torch.tensor([20, 349]) if task == "super_resolution" else None
    with torch.no_grad():
        ours = module.model.diffusion_model(x, t, context, class_labels=labels)
        theirs = unet(x, t, encoder_hidden_states=context, class_labels=labels).sample
        if labels is not None:  # the label matters, so agreement is not by luck
            other = module.model.diffusion_model(x, t, context, class_labels=torch.tensor([0, 0]))
            assert _relative_error(other, ours) > 1e-3
    assert config["in_channels"] == channels
    if task == "super_resolution":
        assert config["num_class_embeds"] == 1000 and config["only_cross_attention"] == [True, True, False]
    assert ours.abs().mean() > 0.1
    assert _relative_error(theirs, ours) <= 1e-5


def test_a_text_to_image_unet_starts_an_inpainting_one_that_computes_the_same():
    source = tiny_module(seed=1)
    state = sd_state_dict_from_ldm(as_checkpoint(source))
    configs = tiny_module_configs()
    configs["denoiser"] = dataclasses.replace(configs["denoiser"], in_channels=9, concat_channels=5)
    inpainting = ImageConditioningConfig(task="inpainting")
    target = LatentDiffusionModule(**configs, image_conditioning=inpainting).eval()
    assert load_initial_weights(target, state) == ["denoiser", "autoencoder", "conditioner"]
    weight = target.model.diffusion_model.input_blocks[0][0].weight
    assert torch.equal(weight[:, :4], source.model.diffusion_model.input_blocks[0][0].weight)
    assert torch.equal(weight[:, 4:], torch.zeros_like(weight[:, 4:]))  # the 5 new channels start at zero
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([5, 600])
    context = torch.randn(2, 16, 32, generator=g)
    image = torch.randn(2, 5, 16, 16, generator=g)  # whatever the mask and masked latent hold
    with torch.no_grad():
        widened = target.model.diffusion_model(torch.cat([x, image], dim=1), t, context)
        original = source.model.diffusion_model(x, t, context)
    torch.testing.assert_close(widened, original)
