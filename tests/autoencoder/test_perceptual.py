"""Tests for ldm/autoencoder/perceptual.py: LPIPS on randomly initialised VGG-16 and heads, loaded
from a file through the same path as released weights."""

import logging

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models import vgg16

from ldm.autoencoder.perceptual import (
    LPIPS,
    LPIPS_CHANNELS,
    load_lpips,
    lpips_from_features,
    lpips_state_dict,
)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    torch.manual_seed(0)
    lpips = LPIPS()
    for lin in lpips.lins:
        lin.model[1].weight.data.uniform_(0.0, 1.0)  # LPIPS heads are non-negative
    path = tmp_path_factory.mktemp("lpips") / "lpips_random.safetensors"
    save_file(lpips_state_dict(lpips), str(path))
    return str(path)


def images(seed: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_lpips_properties(weights_file):
    lpips = load_lpips(weights_file)
    x, y = images(1), images(2)
    with torch.no_grad():
        same, xy, yx = lpips(x, x), lpips(x, y), lpips(y, x)
    assert same.shape == (2, 1, 1, 1)
    torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-6, rtol=0)
    torch.testing.assert_close(xy, yx, rtol=1e-5, atol=1e-7)
    assert (xy > 1e-3).all()
    # Closer images are closer: a small perturbation is smaller than an unrelated image.
    with torch.no_grad():
        near = lpips(x, (x + 0.05 * images(3)).clamp(-1, 1))
    assert (near < xy).all()


def test_lpips_agrees_with_torchvision_vgg16(weights_file):
    """An independent computation: torchvision's own vgg16 with the same weights, layers by index."""
    lpips = load_lpips(weights_file)
    from safetensors.torch import load_file

    state = load_file(weights_file)
    with torch.device("meta"):  # torchvision's VGG-16, built without initialising its 138M weights
        reference = vgg16(weights=None).features.eval()
    reference = reference[:30].to_empty(device="cpu")
    features_state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    reference.load_state_dict(features_state, strict=True)
    x, y = images(4), images(5)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def features(img):
        h, out = (img - shift) / scale, []
        for index, layer in enumerate(reference):
            h = layer(h)
            if index in (3, 8, 15, 22, 29):  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
                out.append(h)
        return out

    with torch.no_grad():
        expected = 0
        for k, (a, b) in enumerate(zip(features(x), features(y))):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = state[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
            expected = expected + ((a - b) ** 2 * w).sum(1).mean(dim=(1, 2))
        torch.testing.assert_close(lpips(x, y).flatten(), expected, rtol=1e-4, atol=1e-7)


def test_lpips_from_features_by_hand():
    """Two channels on a 1x2 map: n(f) = f / |f| per position; d = mean over positions of w . (n0 - n1)^2."""
    f0 = torch.tensor([[3.0, 0.0], [4.0, 1.0]]).view(1, 2, 1, 2)  # positions (3, 4) and (0, 1)
    f1 = torch.tensor([[0.0, 0.0], [2.0, 5.0]]).view(1, 2, 1, 2)  # positions (0, 2) and (0, 5)
    head = nn.Conv2d(2, 1, 1, bias=False)
    head.weight.data = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1)
    # position 1: n0 = (0.6, 0.8), n1 = (0, 1): 2 * 0.36 + 1 * 0.04 = 0.76; position 2: n0 = n1 -> 0.
    d = lpips_from_features([f0], [f1], [head])
    torch.testing.assert_close(d, torch.tensor(0.38).view(1, 1, 1, 1))


def test_missing_weights_mean_no_perceptual_term_with_one_log_line(caplog, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    with caplog.at_level(logging.INFO, logger="ldm.autoencoder.perceptual"):
        assert load_lpips(None) is None
    assert len(caplog.records) == 1 and "without the perceptual term" in caplog.records[0].message
    heads_only = tmp_path / "heads.pt"
    torch.save(
        {f"lin{k}.model.1.weight": torch.ones(1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)}, heads_only
    )
    assert load_lpips(str(heads_only)) is None  # heads but no VGG-16 anywhere
    with pytest.raises(FileNotFoundError, match="perceptual_weights"):
        load_lpips(str(tmp_path / "absent.pt"))


def test_heads_and_vgg_from_separate_files_and_frozen(weights_file, tmp_path):
    from safetensors.torch import load_file

    state = load_file(weights_file)
    heads, vgg = tmp_path / "heads.pt", tmp_path / "vgg16.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, heads)
    full = {k: v for k, v in state.items() if k.startswith("features.")}
    full.update({"classifier.6.weight": torch.zeros(10, 4), "classifier.6.bias": torch.zeros(10)})  # ignored
    torch.save(full, vgg)
    lpips, reference = load_lpips(str(heads), str(vgg)), load_lpips(weights_file)
    x, y = images(6), images(7)
    with torch.no_grad():
        torch.testing.assert_close(lpips(x, y), reference(x, y), rtol=0, atol=0)
    assert list(lpips.parameters()) == [] and lpips.state_dict() == {}  # frozen, not checkpointed
    negative = {k: -v if k.startswith("lin0") else v for k, v in state.items()}
    save_file(negative, str(tmp_path / "negative.safetensors"))
    with pytest.raises(ValueError, match="non-negative"):
        load_lpips(str(tmp_path / "negative.safetensors"))
