"""ldm/benchmark/autoencoder.py: encode and decode cases compute the autoencoder's outputs; images/s."""

from __future__ import annotations

import torch

from ldm.benchmark import timing
from ldm.benchmark.autoencoder import autoencoder_inputs, measure_autoencoder, our_autoencoder_cases


def test_cases_compute_the_autoencoders_outputs(debug):
    _, settings, networks = debug
    images, latents = autoencoder_inputs(networks, settings, 3)
    assert images.shape == (3, 3, 32, 32) and latents.shape == (3, 4, 16, 16)
    assert -1 <= images.min() and images.max() <= 1
    cases = our_autoencoder_cases(networks, settings, 3)
    with torch.no_grad():
        assert torch.equal(cases["encode"](), networks.autoencoder.encode(images).mean)
        assert torch.equal(cases["decode"](), networks.autoencoder.decode(latents))
    assert not cases["decode"]().requires_grad


def test_encode_and_decode_alternate_and_report_images_per_second(debug, squares_clock):
    _, settings, networks = debug
    squares_clock(timing)
    encode, decode = measure_autoencoder(networks, settings, 4)
    # Rounds on the squares clock: encode 1, 9, 17 s and decode 5, 13, 21 s (they alternate).
    assert (encode.case, encode.metrics["seconds"].value) == ("encode", 9)
    assert (decode.case, decode.metrics["seconds"].value) == ("decode", 13)
    assert encode.metrics["images_per_s"].value == 4 / 9 and decode.metrics["images_per_s"].value == 4 / 13
    assert encode.metrics["images_per_s"].unit == "images/s" and encode.batch_size == 4
