"""ldm/conditioning/image.py: an image-conditioning task, checked against the networks it needs."""

from __future__ import annotations

import dataclasses

import pytest

from ldm.conditioning.image import build_image_conditioner, check_image_conditioning
from ldm.conditioning.inpainting import InpaintingConditioner
from ldm.conditioning.low_resolution import LowResolutionConditioner
from ldm.config import AutoencoderConfig, ImageConditioningConfig, UNetConfig

F4 = AutoencoderConfig(ch_mult=[1, 2, 4])  # f = 4, 4 latent channels
SR = ImageConditioningConfig(task="super_resolution")
SR_UNET = UNetConfig(in_channels=7, concat_channels=3, num_classes=1000)
INPAINT = ImageConditioningConfig(task="inpainting")
INPAINT_UNET = UNetConfig(in_channels=9, concat_channels=5)


def test_each_task_builds_its_conditioner():
    assert build_image_conditioner(ImageConditioningConfig(), UNetConfig(), F4) is None
    assert isinstance(build_image_conditioner(SR, SR_UNET, F4), LowResolutionConditioner)
    assert isinstance(build_image_conditioner(INPAINT, INPAINT_UNET, F4), InpaintingConditioner)


@pytest.mark.parametrize("task,denoiser,autoencoder,message", [
    (SR, UNetConfig(), F4, r"3 channels to the latent: set denoiser.concat_channels=3 \(got 0\)"),
    (SR, dataclasses.replace(SR_UNET, in_channels=4), F4, r"denoiser in/out channels \(4/4\) must be"),
    (SR, SR_UNET, AutoencoderConfig(), "upscale=4 must equal the autoencoder's factor 8"),
    (SR, dataclasses.replace(SR_UNET, num_classes=None), F4, "set denoiser.num_classes=1000 \\(got None\\)"),
    (dataclasses.replace(SR, noise_level=1000), SR_UNET, F4, r"noise_level must be in \[0, 999\], got 1000"),
    (INPAINT, INPAINT_UNET, AutoencoderConfig(embed_dim=3, z_channels=3),
     "task=inpainting concatenates 4 channels to the latent: set denoiser.concat_channels=4 \\(got 5\\)"),
    (INPAINT, dataclasses.replace(INPAINT_UNET, num_classes=1000), F4, "num_classes embeds the low-res"),
    (dataclasses.replace(INPAINT, mask_full=0.9, mask_empty=0.3), INPAINT_UNET, F4, r"full \+ mask_empty"),
    (ImageConditioningConfig(task="colorize"), UNetConfig(), F4, "unknown image_conditioning.task 'colori"),
    (ImageConditioningConfig(), INPAINT_UNET, F4, "task=none concatenates 0 channels"),
])  # fmt: skip
def test_what_does_not_fit_is_one_line(task, denoiser, autoencoder, message):
    with pytest.raises(ValueError, match=message):
        check_image_conditioning(task, denoiser, autoencoder)
