"""ldm/diffusion/latent_diffusion.py: what the inpainting loss weighs (the rest is tested through the
pipeline and the training modules)."""

from __future__ import annotations

import dataclasses

import torch

from ldm.config import ImageConditioningConfig
from ldm.diffusion.latent_diffusion import LatentDiffusion
from tests.conftest import tiny_module_configs


def inpainting_model(border_weight: float) -> LatentDiffusion:
    configs = tiny_module_configs()
    configs["denoiser"] = dataclasses.replace(configs["denoiser"], in_channels=9, concat_channels=5)
    torch.manual_seed(0)
    task = ImageConditioningConfig(task="inpainting", upscale=2, border_weight=border_weight)
    return LatentDiffusion(**configs, image_conditioning=task)


def test_inpainting_loss_weighs_the_kept_cells_beside_the_mask():
    model = inpainting_model(border_weight=4.0)
    seen = {}

    def spy(network, z0, context, generator=None, element_weights=None):
        seen.update(mask=context.image.concat[:, :1].clone(), weights=element_weights)
        return torch.zeros(())

    model.objective.forward = spy
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    batch = {"image": images, "caption": ["a red circle"] * 4}
    model.loss(batch, train=True, generator=torch.Generator().manual_seed(2))
    mask, weights = seen["mask"], seen["weights"]
    assert weights.shape == (4, 1, 16, 16)
    # Independently: a kept cell weighs 4 when one of its 8 neighbours is masked, every other cell 1.
    expected = torch.ones_like(mask)
    for b, _, i, j in torch.nonzero(mask == 0).tolist():
        window = mask[b, 0, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
        if window.max() == 1:
            expected[b, 0, i, j] = 4.0
    torch.testing.assert_close(weights, expected)
    assert (weights == 4).any()  # the random masks of this draw have edges

    plain = inpainting_model(border_weight=1.0)
    plain.objective.forward = spy
    plain.loss(batch, train=True, generator=torch.Generator().manual_seed(2))
    assert seen["weights"] is None
