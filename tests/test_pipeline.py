import pytest
import torch

from ldm.config import SamplerConfig
from ldm.pipeline import Text2Image
from ldm.training.diffusion_module import LatentDiffusionModule
from tests.conftest import tiny_module_configs


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    module = LatentDiffusionModule(**tiny_module_configs()).eval()
    # Make the U-Net's output non-trivial (its last conv is zero-initialised).
    torch.nn.init.normal_(module.model.diffusion_model.out[2].weight, std=0.05)
    return Text2Image.from_module(module)


def test_a_seed_gives_the_same_image_whatever_the_batch(pipe):
    batch = pipe(["a red circle", "a blue square", "a red circle"], [11, 12, 13])
    alone = pipe(["a blue square"], [12])
    assert batch.shape == (3, 3, 32, 32) and batch.min() >= 0 and batch.max() <= 1
    torch.testing.assert_close(batch[1:2], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(batch[0], batch[2])  # different seeds, same prompt


def test_size_and_argument_checks(pipe):
    assert pipe(["x"], [0], height=16, width=48).shape == (1, 3, 16, 48)
    with pytest.raises(ValueError, match="not divisible by the autoencoder factor 2"):
        pipe(["x"], [0], height=31)
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        pipe(["x", "y"], [0])


def test_channel_mismatch_is_reported():
    configs = tiny_module_configs()
    configs["denoiser"].context_dim = 48
    with pytest.raises(ValueError, match="context_dim=48 but the text encoder's width is 32"):
        LatentDiffusionModule(**configs)


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde"])
def test_a_seed_gives_the_same_image_whatever_the_batch_for_stochastic_samplers(pipe, name):
    sampler = SamplerConfig(name=name, steps=3)
    batch = pipe(["a red circle", "a blue square", "a red circle"], [11, 12, 13], sampler=sampler)
    alone = pipe(["a blue square"], [12], sampler=sampler)
    torch.testing.assert_close(batch[1:2], alone, atol=1e-5, rtol=0)
    deterministic = pipe(["a blue square"], [12], sampler=SamplerConfig(name=name, steps=3, eta=0.0))
    assert not torch.allclose(alone, deterministic, atol=1e-3)  # eta reaches the sampler


def test_request_checks_name_the_choices(pipe):
    with pytest.raises(ValueError, match="unknown sampler 'nope'; available: ddim, ddpm"):
        pipe(["x"], [0], sampler=SamplerConfig(name="nope"))
    with pytest.raises(ValueError, match="unknown sigma schedule 'cosine'; available: discrete, karras"):
        pipe(["x"], [0], sampler=SamplerConfig(schedule="cosine"))
    with pytest.raises(ValueError, match="guidance rescale must be in"):
        pipe(["x"], [0], sampler=SamplerConfig(guidance_rescale=2.0))


def random_images(n):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))


def test_img2img_starts_at_the_step_of_its_strength(pipe):
    images = random_images(2)
    sampler = SamplerConfig(steps=4, schedule="karras")
    seen = []
    out = pipe.img2img(
        images, ["a blue circle"] * 2, [5, 6], strength=0.5, sampler=sampler, callback=seen.append
    )
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    sigmas = pipe.sigmas(sampler)
    assert [d["i"] for d in seen] == [0, 1]
    assert seen[0]["sigma"].item() == pytest.approx(sigmas[2].item())  # the last 2 of 4 steps
    # The first x is the image's latent plus sigma times noise drawn from each seed's generator.
    noise = torch.stack(
        [torch.randn(seen[0]["x"].shape[1:], generator=torch.Generator().manual_seed(s)) for s in (5, 6)]
    )
    torch.testing.assert_close(seen[0]["x"], pipe.encode(images) + sigmas[2] * noise, atol=1e-5, rtol=1e-5)


def test_img2img_strength_zero_returns_the_reconstruction_and_one_runs_every_step(pipe):
    images = random_images(1)
    torch.testing.assert_close(
        pipe.img2img(images, ["x"], [0], strength=0.0), pipe.decode(pipe.encode(images))
    )
    seen = []
    pipe.img2img(images, ["x"], [0], strength=1.0, sampler=SamplerConfig(steps=3), callback=seen.append)
    assert len(seen) == 3 and seen[0]["sigma"].item() == pytest.approx(pipe.denoiser.sigmas[-1].item())


def test_img2img_seed_is_independent_of_the_batch(pipe):
    images = random_images(2)
    sampler = SamplerConfig(name="euler_ancestral", steps=4)
    batch = pipe.img2img(images, ["a", "b"], [7, 8], strength=0.75, sampler=sampler)
    alone = pipe.img2img(images[1:], ["b"], [8], strength=0.75, sampler=sampler)
    torch.testing.assert_close(batch[1:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"strength": 1.5}, "strength must be in \\[0, 1\\], got 1.5"),
        ({"images": torch.zeros(1, 1, 32, 32)}, "expected images of shape \\[B, 3, H, W\\]"),
        ({"images": torch.full((1, 3, 32, 32), 2.0)}, "expected image values in \\[0, 1\\]"),
        ({"seeds": [1, 2]}, "got 1 images, 1 prompts and 2 seeds"),
    ],
)
def test_img2img_argument_checks(pipe, kwargs, message):
    args = {"images": torch.zeros(1, 3, 32, 32), "prompts": ["x"], "seeds": [0], "strength": 0.5, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe.img2img(args.pop("images"), args.pop("prompts"), args.pop("seeds"), **args)


def test_negative_prompt_is_the_unconditional_branch(pipe):
    # Guidance scale 0 keeps only the unconditional branch, which sees the negative prompt.
    negative = pipe(
        ["a red circle"],
        [3],
        sampler=SamplerConfig(steps=3, guidance_scale=0.0),
        negative_prompt="a blue square",
    )
    direct = pipe(["a blue square"], [3], sampler=SamplerConfig(steps=3, guidance_scale=1.0))
    torch.testing.assert_close(negative, direct, atol=1e-5, rtol=0)


def test_per_channel_normalization_samples_as_its_folded_export():
    """A model that normalizes latents per channel, and the same weights in SD's layout (the
    normalization folded into the autoencoder, ldm.weights.sd), give the same images and img2img."""
    import dataclasses

    from ldm.diffusion.latent_diffusion import LatentDiffusion
    from ldm.weights.sd import split_sd_state_dict

    configs = tiny_module_configs()
    torch.manual_seed(0)
    channel = LatentDiffusion(
        **{**configs, "diffusion": dataclasses.replace(configs["diffusion"], latent_normalization="channel")}
    ).eval()
    torch.nn.init.normal_(channel.model.diffusion_model.out[2].weight, std=0.05)
    channel.latent_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.1]))
    channel.latent_std.copy_(torch.tensor([0.3, 2.0, 5.0, 1.0]))
    parts = split_sd_state_dict(channel.state_dict())
    assert "latent_mean" not in parts["autoencoder"]
    plain = LatentDiffusion(**configs).eval()
    plain.model.diffusion_model.load_state_dict(parts["denoiser"])
    plain.first_stage_model.load_state_dict(parts["autoencoder"])
    plain.cond_stage_model.model.load_state_dict(parts["conditioner"])
    assert plain.channel_statistics() is None and parts["scale_factor"] == 1.0

    ours, folded = Text2Image.from_module(channel), Text2Image.from_module(plain)
    torch.testing.assert_close(ours(["a red circle"], [5]), folded(["a red circle"], [5]), atol=1e-5, rtol=0)
    images = random_images(2)
    torch.testing.assert_close(ours.encode(images), folded.encode(images), atol=1e-5, rtol=1e-5)
    batch = {"image": images * 2 - 1}
    torch.testing.assert_close(
        channel.latents_of(batch, sample=False), folded.encode(images), atol=1e-5, rtol=1e-5
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_graphs_are_refused_off_cuda(pipe):
    with pytest.raises(ValueError, match="CUDA graphs need the networks on a CUDA device; they are on cpu"):
        Text2Image(
            pipe.autoencoder, pipe.text_encoder, pipe.denoiser, pipe.scale_factor, pipe.image_size, pipe.sampler,
            cuda_graphs=True,
        )  # fmt: skip


@pytest.mark.slow
def test_compiled_pipeline_samples_what_the_eager_one_does(pipe):
    """compile=True: the denoiser and the autoencoder compiled, weights frozen in (about a minute here)."""
    compiled = Text2Image(
        pipe.autoencoder, pipe.text_encoder, pipe.denoiser, pipe.scale_factor, pipe.image_size, pipe.sampler,
        compile=True,
    )  # fmt: skip
    prompts, seeds = ["a red circle", "a blue square"], [11, 12]
    expected = compiled(prompts, seeds)
    torch.testing.assert_close(expected, pipe(prompts, seeds), atol=1e-5, rtol=0)
    # Compiled indeed, with the weights of the first call: a later change does not reach it.
    bias = pipe.denoiser.diffusion_model.out[2].bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias.add_(0.5)
        torch.testing.assert_close(compiled(prompts, seeds), expected, atol=1e-5, rtol=0)
        assert (pipe(prompts, seeds) - expected).abs().max() > 1e-2
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        compiled.img2img(images, prompts, seeds, strength=0.5),
        pipe.img2img(images, prompts, seeds, strength=0.5),
        atol=1e-5,
        rtol=0,
    )


def test_a_sampling_run_projects_the_text_context_once_per_cross_attention(pipe):
    """The guided batch's context is one tensor for the whole run, so each cross-attention's keys and
    values (ldm.memo) are computed on the first step only; the next run, with new prompts, recomputes."""
    attn = pipe.denoiser.diffusion_model.middle_block[1].transformer_blocks[0].attn2
    calls = []
    handle = attn.to_k.register_forward_hook(lambda *_: calls.append(1))
    try:
        sampler = SamplerConfig(name="euler", steps=4)
        pipe(["a red circle"], [1], sampler=sampler)
        assert len(calls) == 1
        pipe(["a blue square"], [1], sampler=sampler)
        assert len(calls) == 2
    finally:
        handle.remove()
