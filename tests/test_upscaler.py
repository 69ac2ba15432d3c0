"""ldm/upscaler.py: a super-resolution model's sampling pipeline."""

from __future__ import annotations

import pytest
import torch

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
