"""Mixed precision for ldm/autoencoder/model.py: bf16 autocast and fp16 decoding give no NaN or inf."""

import numpy as np
import torch

from ldm.autoencoder.model import KLAutoencoder
from ldm.config import AutoencoderConfig
from ldm.data.shapes import generate_shapes

TINY = AutoencoderConfig(resolution=32, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, norm_groups=8)


def shapes_images(n: int = 8) -> torch.Tensor:
    """Real inputs: the first shapes-set validation images, [n, 3, 32, 32] in [-1, 1]."""
    arrays = [
        np.asarray(s.image, dtype=np.float32) for s in generate_shapes(n, resolution=32, seed=0, split="val")
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def model_with_large_activations() -> KLAutoencoder:
    """Random weights, with the decoder's input conv scaled so that its residual stream reaches ~1e5-1e6:
    beyond fp16's 65504, as SD's decoder does at high resolution."""
    torch.manual_seed(0)
    model = KLAutoencoder.from_config(TINY).eval()
    with torch.no_grad():
        model.decoder.conv_in.weight.mul_(3e5)
        model.decoder.conv_in.bias.mul_(3e5)
    return model


def test_bf16_autocast_encode_decode_is_finite_and_close():
    torch.manual_seed(0)
    model = KLAutoencoder.from_config(TINY).eval()
    for x in (torch.rand(4, 3, 32, 32) * 2 - 1, shapes_images()):
        with torch.no_grad():
            reference = model(x, sample_posterior=False)[0]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                posterior = model.encode(x)
                image = model.decode(posterior.mode())
        assert image.dtype == torch.bfloat16
        for t in (posterior.mean, posterior.logvar, image):
            assert torch.isfinite(t).all()
        error = ((image.float() - reference).norm() / reference.norm()).item()
        assert error < 0.05  # bf16 keeps 8 bits of mantissa


def test_fp16_decode_runs_in_fp32():
    model = model_with_large_activations()
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model.decode(z)
        assert torch.isfinite(reference).all() and reference.abs().max() > 0
        # The failure being guarded against: the same network run in fp16 overflows.
        half = KLAutoencoder.from_config(TINY).eval().half()
        half.load_state_dict(model.state_dict())
        naive = half.decoder(half.post_quant_conv(z.half()))
        assert not torch.isfinite(naive).all()
        # Half weights and half latents: decoded in fp32, returned as fp16.
        image = half.decode(z.half())
        assert image.dtype == torch.float16 and torch.isfinite(image).all()
        torch.testing.assert_close(image.float(), reference, rtol=0.05, atol=0.05)
        # fp32 weights under fp16 autocast: the same.
        with torch.autocast("cpu", dtype=torch.float16):
            image = model.decode(z)
        assert torch.isfinite(image).all()
        torch.testing.assert_close(image.float(), reference, rtol=0, atol=0)
