"""ldm/upscaler.py: a super-resolution model's sampling pipeline."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ldm.samplers.distilled import DistilledSampling
from ldm.samplers.presets import sampler_preset
from ldm.upscaler import Upscaler
from ldm.weights.checkpoint import CheckpointError
from tests.conftest import save_tiny_image_conditioned, save_tiny_latent_diffusion


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    path = save_tiny_image_conditioned(
        tmp_path_factory.mktemp("sr") / "last.ckpt", "super_resolution", seed=0
    )
    return Upscaler.from_checkpoint(path, device="cpu")


def low_res_images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_outputs_are_factor_times_larger_and_each_seed_is_its_own(upscaler):
    sampler = sampler_preset(upscaler.sampler, "euler_ancestral", steps=3)  # stochastic: every draw counts
    images = low_res_images()
    batch = upscaler(images, ["a red circle"] * 3, [4, 5, 6], sampler=sampler)
    assert batch.shape == (3, 3, 32, 32) and 0 <= batch.min() and batch.max() <= 1
    alone = upscaler(images[1:2], ["a red circle"], [5], sampler=sampler)
    torch.testing.assert_close(alone, batch[1:2], rtol=0, atol=1e-5)


def test_the_input_and_its_noise_level_condition_the_samples(upscaler):
    sampler = sampler_preset(upscaler.sampler, steps=3)
    images = low_res_images(1)
    base = upscaler(images, ["a red circle"], [1], sampler=sampler, noise_level=0)
    other_input = upscaler(1 - images, ["a red circle"], [1], sampler=sampler, noise_level=0)
    other_level = upscaler(images, ["a red circle"], [1], sampler=sampler, noise_level=300)
    assert (base - other_input).abs().mean() > 1e-3 and (base - other_level).abs().mean() > 1e-3
    assert upscaler.noise_level == 20  # the checkpoint's image_conditioning.noise_level


def test_requests_that_cannot_be_upscaled_are_one_line(upscaler):
    sampler = upscaler.sampler
    # The autoencoder halves, the U-Net halves again: outputs must be multiples of 4, inputs of 2.
    with pytest.raises(ValueError, match="an input of 15x16 pixels upscales to 30x32, .*multiples of 2"):
        upscaler(torch.zeros(1, 3, 16, 15), ["a"], [0], sampler=sampler)
    with pytest.raises(ValueError, match=r"noise level must be in \[0, 999\], got 1000"):
        upscaler(torch.zeros(1, 3, 16, 16), ["a"], [0], sampler=sampler, noise_level=1000)
    with pytest.raises(ValueError, match=r"expected input images with values in \[0, 1\]"):
        upscaler(torch.full((1, 3, 16, 16), 2.0), ["a"], [0], sampler=sampler)


def test_a_checkpoint_of_another_kind_is_refused(tmp_path):
    path = save_tiny_latent_diffusion(tmp_path / "t2i.ckpt", seed=0)
    with pytest.raises(CheckpointError, match="is a text-to-image checkpoint .*needs a super-resolution one"):
        Upscaler.from_checkpoint(path, device="cpu")


def test_a_guidance_distilled_student_upscales_in_its_steps_with_w_beside_the_image(tmp_path):
    distilled = DistilledSampling(3, (1.0, 8.0), "v", teacher="teacher.ckpt")
    path = save_tiny_image_conditioned(tmp_path / "distill-3.ckpt", "super_resolution", 0, distilled)
    upscaler = Upscaler.from_checkpoint(path, device="cpu")
    assert (upscaler.sampler.name, upscaler.sampler.steps) == ("ddim", 3)  # the checkpoint's own sampler
    calls: list = []
    upscaler.pipe.denoiser.diffusion_model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append((tuple(args[0].shape), kwargs)), with_kwargs=True
    )
    images, prompts, w = low_res_images(2), ["a red circle"] * 2, upscaler.sampler.guidance_scale
    out = upscaler(images, prompts, [1, 2], noise_level=30)
    assert out.shape == (2, 3, 32, 32)
    assert [shape for shape, _ in calls] == [(2, 4 + 3, 16, 16)] * 3  # no unconditional half; latent + RGB
    for _, kwargs in calls:
        assert torch.equal(kwargs["class_labels"], torch.tensor([30, 30]))
        assert torch.equal(kwargs["guidance"], torch.full((2,), w))
    other_w = upscaler(images, prompts, [1, 2], noise_level=30, sampler=dataclasses.replace(
        upscaler.sampler, guidance_scale=w / 2))  # fmt: skip
    assert (other_w - out).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="no unconditional branch: negative prompts do not apply"):
        upscaler(images, prompts, [1, 2], negative_prompt="blurry")
    with pytest.raises(ValueError, match="distilled for 3 sampling steps, not 5"):
        upscaler(images, prompts, [1, 2], sampler=dataclasses.replace(upscaler.sampler, steps=5))
