import pytest
import torch

from ldm.diffusion.module import LatentDiffusionModule
from ldm.pipeline import Text2Image
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
