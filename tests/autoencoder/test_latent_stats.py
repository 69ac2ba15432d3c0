"""Tests for ldm/autoencoder/latent_stats.py."""

import pytest
import torch

from ldm.autoencoder.latent_stats import compute_latent_stats, stored_latent_stats, stored_scale_factor
from ldm.autoencoder.model import KLAutoencoder
from ldm.config import AutoencoderConfig


def test_stats_match_direct_computation_on_the_same_samples():
    torch.manual_seed(0)
    model = KLAutoencoder.from_config(
        AutoencoderConfig(resolution=16, ch=8, ch_mult=[1, 2], num_res_blocks=1, norm_groups=4)
    ).eval()
    batches = [torch.rand(3, 3, 16, 16) * 2 - 1 for _ in range(3)]
    stats = compute_latent_stats(model, batches, max_batches=2, seed=5)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        z = torch.cat([model.encode(x).sample(generator) for x in batches[:2]])  # [6, 4, 8, 8]
    assert stats["num_images"] == 6
    assert stats["scale_factor"] == pytest.approx(1.0 / z.std().item(), rel=1e-6)
    assert stats["mean"] == pytest.approx(z.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert stats["std"] == pytest.approx(z.transpose(0, 1).reshape(4, -1).std(dim=1).tolist(), rel=1e-5)
    with pytest.raises(ValueError, match="max_batches"):
        compute_latent_stats(model, batches, max_batches=0)


def test_stored_stats_and_missing(tmp_path):
    assert stored_latent_stats({"ldm_stage": "autoencoder"}) is None
    assert stored_scale_factor(None) is None
    path = tmp_path / "ae.ckpt"
    stats = {"scale_factor": 2.5, "mean": [0.0], "std": [0.4], "num_images": 8}
    torch.save({"ldm_stage": "autoencoder", "state_dict": {}, "latent_stats": stats}, path)
    assert stored_scale_factor(path) == 2.5
    torch.save({"ldm_stage": "autoencoder", "state_dict": {}}, path)
    assert stored_scale_factor(path) is None
