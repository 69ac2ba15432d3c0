"""ldm/conditioning/low_resolution.py: SD x4's noise augmentation of the low-resolution input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldm.conditioning.low_resolution import LowResolutionConditioner, downsample
from ldm.samplers.noise import per_sample_generators


def sd_x4_alphas_cumprod() -> np.ndarray:
    """LDM's make_beta_schedule("linear", 1000, 1e-4, 0.02), written out: linspace in sqrt(beta), squared."""
    betas = np.linspace(1e-4**0.5, 0.02**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1 - betas)


def test_augmentation_is_the_forward_process_of_sd_x4s_schedule():
    conditioner = LowResolutionConditioner(4, 350)
    g = torch.Generator().manual_seed(0)
    low_res, noise = torch.rand(3, 3, 4, 4, generator=g) * 2 - 1, torch.randn(3, 3, 4, 4, generator=g)
    levels = torch.tensor([0, 20, 349])
    image = conditioner.augment(low_res, levels, noise)
    a = torch.tensor(sd_x4_alphas_cumprod()[[0, 20, 349]], dtype=torch.float32)[:, None, None, None]
    torch.testing.assert_close(image.concat, a.sqrt() * low_res + (1 - a).sqrt() * noise)
    assert torch.equal(image.class_labels, levels)
    assert a[0].item() == pytest.approx(1 - 1e-4)  # level 0 keeps the input (SD: noise-free up to 1e-4)


def test_training_levels_lie_below_the_maximum_and_each_sample_draws_alone():
    conditioner = LowResolutionConditioner(4, 350)
    images = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    image = conditioner.for_training(images, per_sample_generators(range(64)))
    assert image.concat.shape == (64, 3, 4, 4)
    labels = image.class_labels
    assert 0 <= labels.min() and labels.max() < 350 and len(labels.unique()) > 40  # 64 draws of 350 levels
    alone = conditioner.for_training(images[5:6], per_sample_generators([5]))
    assert torch.equal(alone.class_labels, labels[5:6]) and torch.equal(alone.concat, image.concat[5:6])


def test_downsampling_keeps_flat_colours_and_filters_out_pixel_stripes():
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(downsample(flat, 4), torch.full((1, 3, 4, 4), 0.3))
    stripes = torch.zeros(1, 1, 16, 16)
    stripes[..., ::4] = 1.0  # every 4th column lit: a pattern that 4x fewer pixels cannot hold
    small = downsample(stripes, 4)
    assert small.shape == (1, 1, 4, 4)
    # Antialiased: away from the borders the stripes average to their duty cycle, 1/4; bicubic sampling
    # without the low-pass filter reads between the lit columns (-0.094 everywhere).
    torch.testing.assert_close(small[..., 1:3], torch.full((1, 1, 4, 2), 0.25), atol=0.01, rtol=0)
    assert F.interpolate(stripes, size=(4, 4), mode="bicubic").max() < 0
    with pytest.raises(ValueError, match="image size 15x16 is not divisible by the upscaling factor 4"):
        downsample(torch.zeros(1, 3, 15, 16), 4)


def test_noise_levels_outside_the_schedule_are_refused():
    conditioner = LowResolutionConditioner(4, 350)
    with pytest.raises(ValueError, match=r"noise level must be in \[0, 999\], got 1000"):
        conditioner.for_sampling(torch.zeros(1, 3, 4, 4), 1000)
    with pytest.raises(ValueError, match=r"max_noise_level must be in \[1, 1000\], got 0"):
        LowResolutionConditioner(4, 0)
