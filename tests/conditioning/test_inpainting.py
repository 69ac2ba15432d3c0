"""ldm/conditioning/inpainting.py: SD inpainting's mask and masked-image latent."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm.conditioning.inpainting import InpaintingConditioner, binary_masks, masked_images


def pool_encoder(images: torch.Tensor) -> torch.Tensor:
    """A stand-in autoencoder with f = 4 and 4 channels: 4x4 means of the RGB channels and their sum."""
    pooled = F.avg_pool2d(images, 4)
    return torch.cat([pooled, pooled.sum(dim=1, keepdim=True)], dim=1)


def conditioner() -> InpaintingConditioner:
    return InpaintingConditioner(mask_full=0.25, mask_empty=0.1, mask_strokes=0.5)


def test_concat_is_the_nearest_mask_then_the_masked_images_latent():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, :, 0:4, 0:4] = 1  # one whole latent cell
    masks[1, :, 1:3, 5:8] = 1  # inside the top right cell, not at its sampled (top left) pixel
    image = conditioner()(images, masks, pool_encoder)
    assert image.concat.shape == (2, 5, 2, 2) and image.class_labels is None
    # Nearest-neighbour resizing samples pixel (4i, 4j) of each 4x4 cell (SD: F.interpolate, nearest).
    assert image.concat[:, 0].tolist() == [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]
    blanked = images.clone()
    blanked[0, :, 0:4, 0:4] = 0
    blanked[1, :, 1:3, 5:8] = 0
    torch.testing.assert_close(image.concat[:, 1:], pool_encoder(blanked))


def test_masks_are_binarised_at_one_half_and_blank_to_mid_grey():
    masks = torch.tensor([0.0, 0.49, 0.5, 1.0]).view(1, 1, 2, 2)
    assert binary_masks(masks).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    images = torch.full((1, 3, 2, 2), 0.8)
    assert masked_images(images, binary_masks(masks))[0, 0].flatten().tolist() == pytest.approx(
        [0.8, 0.8, 0, 0]
    )


def test_a_mask_of_another_size_is_one_line():
    with pytest.raises(
        ValueError, match="the mask is 8x4 pixels but the image 8x8: they must be the same size"
    ):
        conditioner()(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 4, 8), pool_encoder)


def test_training_masks_come_from_the_generator():
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    a = conditioner().for_training(images, pool_encoder, torch.Generator().manual_seed(7))
    b = conditioner().for_training(images, pool_encoder, torch.Generator().manual_seed(7))
    assert torch.equal(a.concat, b.concat)
