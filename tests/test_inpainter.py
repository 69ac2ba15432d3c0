"""ldm/inpainter.py: an inpainting model's sampling pipeline."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ldm.conditioning.inpainting import masked_images
from ldm.inpainter import Inpainter, feathered, paste_unmasked
from ldm.pipeline import Text2Image
from ldm.samplers.distilled import DistilledSampling
from ldm.samplers.presets import sampler_preset
from ldm.weights.checkpoint import CheckpointError
from tests.conftest import save_tiny_image_conditioned


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_image_conditioned(tmp_path_factory.mktemp("inpaint") / "last.ckpt", "inpainting", seed=0)


def inputs(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(n, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1
    return images, masks


def test_samples_depend_on_the_unmasked_pixels_only_and_each_seed_is_its_own(ckpt):
    inpainter = Inpainter.from_checkpoint(ckpt, device="cpu")
    sampler = sampler_preset(inpainter.sampler, "dpmpp_2m_sde", steps=3)
    images, masks = inputs()
    out = inpainter(images, masks, ["a red circle"] * 2, [3, 4], sampler=sampler)
    assert out.shape == (2, 3, 32, 32)
    # What lies under the mask is blanked before the model sees it, whatever it was; soft masks binarise.
    scrambled = images.clone()
    scrambled[:, :, 8:24, 8:24] = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(
        inpainter(scrambled, masks * 0.7, ["a red circle"] * 2, [3, 4], sampler=sampler), out
    )
    assert torch.equal(masked_images(images * 2 - 1, masks), masked_images(scrambled * 2 - 1, masks))
    torch.testing.assert_close(
        inpainter(images[1:], masks[1:], ["a red circle"], [4], sampler=sampler), out[1:]
    )
    kept = inpainter(images.flip(0), masks, ["a red circle"] * 2, [3, 4], sampler=sampler)
    assert (kept - out).abs().mean() > 1e-3  # the unmasked pixels do condition the samples


def test_a_mask_of_another_size_and_an_image_the_autoencoder_cannot_take_are_one_line(ckpt):
    inpainter = Inpainter.from_checkpoint(ckpt, device="cpu")
    images, masks = inputs(1)
    with pytest.raises(
        ValueError, match="the mask is 16x32 pixels but the image 32x32: they must be the same size"
    ):
        inpainter(images, masks[..., :16], ["a"], [0])
    with pytest.raises(ValueError, match="image size 30x30 is not divisible by 4"):
        inpainter(images[..., :30, :30], masks[..., :30, :30], ["a"], [0])


def test_a_checkpoint_of_another_kind_is_refused(ckpt):
    with pytest.raises(CheckpointError, match="is an? inpainting checkpoint .*needs a text-to-image one"):
        Text2Image.from_checkpoint(ckpt, device="cpu")


def test_a_distilled_student_inpaints_with_its_sampler_only(tmp_path):
    distilled = DistilledSampling(2, None, "v", teacher="teacher.ckpt")  # guidance not distilled: CFG
    inpainter = Inpainter.from_checkpoint(
        save_tiny_image_conditioned(tmp_path / "distill-2.ckpt", "inpainting", 0, distilled), device="cpu"
    )
    calls: list = []
    inpainter.pipe.denoiser.diffusion_model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(tuple(args[0].shape)), with_kwargs=True
    )
    images, masks = inputs(1)
    assert inpainter(images, masks, ["a red circle"], [0]).shape == (1, 3, 32, 32)
    assert calls == [(2, 4 + 5, 16, 16)] * 2  # its 2 steps, both guidance branches; latent + mask + latent
    with pytest.raises(ValueError, match="distilled for deterministic DDIM on trailing discrete timesteps"):
        inpainter(images, masks, ["a"], [0], sampler=dataclasses.replace(inpainter.sampler, name="euler"))


def test_feathered_masks_fall_off_as_the_gaussian_tail_outside_and_stay_one_inside():
    masks = torch.zeros(1, 1, 8, 48)
    masks[..., :16] = 1  # a half plane: pixel j's centre lies j - 15.5 pixels beyond its edge
    blurred = feathered(masks, 2.0)
    assert torch.equal(blurred[..., :16], masks[..., :16]) and torch.equal(feathered(masks, 0.0), masks)
    for j in range(16, 28):  # the closed form: the Gaussian's mass beyond the pixel's distance to the edge
        tail = 0.5 * math.erfc((j - 15.5) / (2.0 * math.sqrt(2)))
        assert abs(blurred[0, 0, 4, j].item() - tail) < 0.01, j
    assert torch.all(blurred[..., 30:] < 1e-5) and torch.all(blurred[..., 1:] <= blurred[..., :-1])
    with pytest.raises(ValueError, match="the mask blur must be >= 0 pixels, got -1"):
        feathered(masks, -1.0)


def test_pasting_back_keeps_the_input_outside_the_mask_and_the_sample_inside(ckpt):
    inpainter = Inpainter.from_checkpoint(ckpt, device="cpu")
    sampler = sampler_preset(inpainter.sampler, steps=2)
    images, masks = inputs()
    drawn = inpainter(images, masks, ["a red circle"] * 2, [3, 4], sampler=sampler)
    pasted = inpainter(images, masks * 0.7, ["a red circle"] * 2, [3, 4], sampler=sampler, paste=0)
    inside = masks.expand_as(images).bool()
    assert torch.equal(pasted[~inside], images[~inside]) and torch.equal(pasted[inside], drawn[inside])
    assert (drawn[~inside] - images[~inside]).abs().max() > 0.05  # so the paste did change something
    soft = inpainter(images, masks, ["a red circle"] * 2, [3, 4], sampler=sampler, paste=1.5)
    torch.testing.assert_close(soft, paste_unmasked(drawn, images, masks, 1.5))
    assert torch.equal(soft[:, :, :, :3], images[:, :, :, :3])  # beyond the blur's reach, ceil(3 sigma) px
    ring = soft[:, :, 8:24, 7] - images[:, :, 8:24, 7]  # the column beside the mask: blended
    assert 0 < (ring / (drawn[:, :, 8:24, 7] - images[:, :, 8:24, 7])).median() < 1
    with pytest.raises(ValueError, match="the mask blur of the paste must be >= 0 pixels, got -2"):
        inpainter(images, masks, ["a"] * 2, [0, 1], paste=-2)
