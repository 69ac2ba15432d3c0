"""Tests for ldm/autoencoder/discriminator.py."""

import pytest
import torch

from ldm.autoencoder.discriminator import ActNorm, NLayerDiscriminator


def test_pix2pix_layout_parameter_count_and_patch_shape():
    disc = NLayerDiscriminator(3, 64, 3, "batch")
    # LDM's loss.discriminator.main.* keys: convs at 0, 2, 5, 8, 11; BatchNorms at 3, 6, 9.
    convs = [k for k in disc.state_dict() if k.endswith("weight") and disc.state_dict()[k].ndim == 4]
    assert convs == ["main.0.weight", "main.2.weight", "main.5.weight", "main.8.weight", "main.11.weight"]
    assert "main.2.bias" not in disc.state_dict() and "main.3.running_mean" in disc.state_dict()
    # pix2pix n_layers=3, ndf=64: 2,765,633 parameters ("2.765 M" in pix2pix's printout) (conv 3->64->128->256->512->1, 4x4 kernels).
    expected = (
        (3 * 64 * 16 + 64) + 64 * 128 * 16 + 2 * 128 + 128 * 256 * 16 + 2 * 256 + 256 * 512 * 16 + 2 * 512
    )
    expected += 512 * 16 + 1
    assert sum(p.numel() for p in disc.parameters()) == expected == 2_765_633
    # 256 -> 128 -> 64 -> 32 (stride 2), then 31 -> 30 (stride 1, kernel 4, padding 1): 30x30 patches.
    assert disc(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert disc(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)


def test_actnorm_initialises_to_zero_mean_unit_std_and_has_biases():
    disc = NLayerDiscriminator(3, 8, 2, "actnorm")
    assert "main.2.bias" in disc.state_dict()  # convs before ActNorm keep their bias
    norm = ActNorm(4)
    x = torch.randn(16, 4, 5, 5) * 3 + 2
    y = norm(x)
    flat = y.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1), torch.ones(4), atol=1e-4, rtol=0)
    assert norm.initialized.item() == 1
    torch.testing.assert_close(norm(x + 1), y + norm.scale, rtol=1e-5, atol=1e-5)  # no re-initialisation


def test_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        NLayerDiscriminator(norm="instance")
    with pytest.raises(ValueError, match="num_layers"):
        NLayerDiscriminator(num_layers=0)
