"""ldm/conditioning/inpainting.py: SD inpainting's mask and masked-image latent."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm.conditioning.inpainting import InpaintingConditioner, binary_masks, cell_masks, masked_images


def pool_encoder(images: torch.Tensor) -> torch.Tensor:
    """A stand-in autoencoder with f = 4 and 4 channels: 4x4 means of the RGB channels and their sum."""
    pooled = F.avg_pool2d(images, 4)
    return torch.cat([pooled, pooled.sum(dim=1, keepdim=True)], dim=1)


def conditioner(mask_to_cells: bool = True) -> InpaintingConditioner:
    return InpaintingConditioner(
        factor=4, mask_full=0.25, mask_empty=0.1, mask_strokes=0.5, mask_to_cells=mask_to_cells
    )


def test_sd_resize_is_the_nearest_mask_then_the_masked_images_latent():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, :, 0:4, 0:4] = 1  # one whole latent cell
    masks[1, :, 1:3, 5:8] = 1  # inside the top right cell, not at its sampled (top left) pixel
    image = conditioner(mask_to_cells=False)(images, masks, pool_encoder)
    assert image.concat.shape == (2, 5, 2, 2) and image.class_labels is None
    # Nearest-neighbour resizing samples pixel (4i, 4j) of each 4x4 cell (SD: F.interpolate, nearest).
    assert image.concat[:, 0].tolist() == [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]
    blanked = images.clone()
    blanked[0, :, 0:4, 0:4] = 0
    blanked[1, :, 1:3, 5:8] = 0
    torch.testing.assert_close(image.concat[:, 1:], pool_encoder(blanked))


def test_masks_widen_to_whole_cells_before_blanking_and_resizing():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, :, 0:4, 0:4] = 1  # one whole latent cell: unchanged
    masks[1, :, 1:3, 5:8] = 1  # part of the top right cell: all of it is redrawn
    masks[1, :, 7, 3] = 1  # one pixel of the bottom left cell
    image = conditioner()(images, masks, pool_encoder)
    assert image.concat[:, 0].tolist() == [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]]
    blanked = images.clone()
    blanked[0, :, 0:4, 0:4] = 0
    blanked[1, :, 0:4, 4:8] = 0
    blanked[1, :, 4:8, 0:4] = 0
    torch.testing.assert_close(image.concat[:, 1:], pool_encoder(blanked))


def test_cell_masks_keep_cell_masks_and_refuse_other_sizes():
    masks = (torch.rand(3, 1, 12, 8, generator=torch.Generator().manual_seed(1)) > 0.95).float()
    cells = cell_masks(masks, 4)
    # Each 4x4 cell is all 1 exactly where the mask has a 1 in it, and widening again changes nothing.
    for b in range(3):
        for i in range(0, 12, 4):
            for j in range(0, 8, 4):
                expected = float(masks[b, 0, i : i + 4, j : j + 4].any())
                assert cells[b, 0, i : i + 4, j : j + 4].eq(expected).all()
    assert 0 < cells.mean() < 1
    assert torch.equal(cell_masks(cells, 4), cells)
    assert torch.equal(cell_masks(masks, 1), masks)
    with pytest.raises(ValueError, match="a 8x10 mask does not divide into 4x4 latent cells"):
        cell_masks(torch.zeros(1, 1, 10, 8), 4)


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


def test_border_weights_fall_on_the_kept_cells_beside_the_mask():
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, 4:8, 4:12] = 1  # latent cells (1, 1) and (1, 2) of a 4x4 grid
    masks[1] = 1  # a full mask has no kept cell
    image = conditioner()(torch.zeros(2, 3, 16, 16), masks, pool_encoder)
    weighted = InpaintingConditioner(
        factor=4, mask_full=0.25, mask_empty=0.1, mask_strokes=0.5, border_weight=3.0
    ).loss_weights(image)
    expected = torch.ones(2, 1, 4, 4)
    expected[0, 0, 0:3, 0:4] = 3.0  # the 8-neighbourhood of the two masked cells ...
    expected[0, 0, 1, 1:3] = 1.0  # ... but not the masked cells themselves
    torch.testing.assert_close(weighted, expected)
    assert conditioner().loss_weights(image) is None  # weight 1: the plain mean
    with pytest.raises(ValueError, match="image_conditioning.border_weight must be > 0, got 0"):
        InpaintingConditioner(factor=4, mask_full=0.25, mask_empty=0.1, mask_strokes=0.5, border_weight=0)
