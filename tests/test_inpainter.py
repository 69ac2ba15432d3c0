"""ldm/inpainter.py: an inpainting model's sampling pipeline."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ldm.conditioning.inpainting import masked_images
from ldm.inpainter import Inpainter
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
