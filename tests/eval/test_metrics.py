"""ldm/eval/metrics.py: FID and KID agree with numpy's closed forms on the same features, CLIP score with
100 * cos of open_clip's own embeddings; extractors come from local files, and a missing one is one line."""

from __future__ import annotations

import logging

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torch import nn

from ldm.data.shapes import generate_shapes, write_shapes_dataset
from ldm.eval import metrics
from ldm.eval.metrics import (
    ExtractorUnavailable,
    clip_score,
    extract_features,
    frechet_distance,
    image_metrics,
    kernel_distance,
    load_clip,
    load_inception,
    read_reference_images,
)
from ldm.weights.io import WeightsError
from tests.eval.extractors import (
    frechet_numpy,
    kid_numpy,
    load_tiny_features,
    random_images,
    save_tiny_clip,
    save_tiny_features,
)


def shifted(images: torch.Tensor, amount: int) -> torch.Tensor:
    return (images.int() + amount).clamp(0, 255).to(torch.uint8)


def test_fid_and_kid_agree_with_numpy_and_grow_as_the_sets_part(tmp_path):
    extractor = load_tiny_features(save_tiny_features(tmp_path / "tiny.safetensors"))
    images = random_images(24, seed=1)
    features = {
        amount: extract_features(extractor, list(shifted(images, amount)), batch_size=10)
        for amount in (0, 30, 90)
    }
    same = extract_features(extractor, list(random_images(24, seed=2)))
    fids, kids = [], []
    for amount in (0, 30, 90):
        a, b = same, features[amount]
        fid = frechet_distance(b, a)
        kid, kid_std = kernel_distance(b, a)
        assert fid == pytest.approx(frechet_numpy(b.numpy(), a.numpy()), rel=1e-6, abs=1e-9)
        # 24 against 24 features: every subset is the whole set, so KID is the full-set MMD^2 exactly.
        assert kid == pytest.approx(kid_numpy(a.numpy(), b.numpy()), rel=1e-6, abs=1e-12)
        assert kid_std == pytest.approx(0.0, abs=1e-12)
        fids.append(fid)
        kids.append(kid)
    assert fids[0] < fids[1] < fids[2] and kids[0] < kids[1] < kids[2]
    # A set against itself: 0 up to rounding, far below the distance of the nearest other set.
    itself = frechet_distance(same, same)
    assert abs(itself) < 1e-6 * fids[0] and fids[0] > 0
    assert abs(kernel_distance(same, same)[0] - kid_numpy(same.numpy(), same.numpy())) < 1e-9


def test_kid_subsets_are_seeded_and_average_the_subset_mmds():
    a = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    b = torch.randn(12, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    mean, std = kernel_distance(b, a, subsets=50, seed=3)
    assert (mean, std) == kernel_distance(b, a, subsets=50, seed=3)
    assert std > 0  # subsets of 12 of the 30 reference features differ
    # The same draws, replayed: torchmetrics takes a permutation of each set per subset, in this order.
    torch.manual_seed(3)
    values = []
    for _ in range(50):
        real = a[torch.randperm(30)[:12]].numpy()
        fake = b[torch.randperm(12)[:12]].numpy()
        values.append(kid_numpy(real, fake))
    assert mean == pytest.approx(np.mean(values), rel=1e-9)
    assert std == pytest.approx(np.std(values), rel=1e-6)  # torchmetrics: the biased std


def test_features_of_mixed_sizes_are_batched_by_size(tmp_path):
    extractor = load_tiny_features(save_tiny_features(tmp_path / "tiny.safetensors"))
    images = [*random_images(3, seed=4, size=32), *random_images(2, seed=5, size=16), random_images(1, 6)[0]]
    together = extract_features(extractor, images, batch_size=2)
    one_by_one = torch.cat([extractor(image[None]).double() for image in images])
    torch.testing.assert_close(together, one_by_one.detach())
    with pytest.raises(ValueError, match="needs 2 or more generated and reference images"):
        frechet_distance(together[:1], together)


def test_reference_folder_reads_image_files_and_shards(tmp_path):
    shards = write_shapes_dataset(
        tmp_path / "data", resolution=32, seed=0, num_train=2, num_val=3, samples_per_shard=2
    )
    folder = tmp_path / "reference"
    folder.mkdir()
    for shard in shards.val:
        (folder / shard.split("/")[-1]).write_bytes(open(shard, "rb").read())
    extra = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    Image.fromarray(extra).save(folder / "zz.png")
    images = read_reference_images(folder)
    expected = [
        np.asarray(s.image.convert("RGB")) for s in generate_shapes(3, resolution=32, seed=0, split="val")
    ]
    assert len(images) == 4
    for image, pixels in zip(images, [*expected, extra], strict=True):
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), pixels)
    with pytest.raises(FileNotFoundError, match="reference folder not found"):
        read_reference_images(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no reference images"):
        read_reference_images(empty)


def test_missing_inception_weights_are_one_line_and_the_metrics_skipped(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv(metrics.INCEPTION_ENV, raising=False)
    reference = tmp_path / "reference"
    reference.mkdir()
    Image.new("RGB", (8, 8)).save(reference / "a.png")
    missing = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    images = torch.rand(2, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="ldm.eval.metrics"):
        values, skipped = image_metrics(
            images, ["a", "b"], ["fid", "kid"], reference=reference, inception=missing
        )
    assert values == {} and set(skipped) == {"fid", "kid"}
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "\n" not in line and line.startswith("fid and kid skipped: InceptionV3 weights file not found: ")
    assert str(missing) in line and "--inception" in line and metrics.INCEPTION_ENV in line
    with pytest.raises(ValueError, match="need a folder of reference images"):
        image_metrics(images, ["a", "b"], ["kid"], inception=missing)


def test_inception_file_found_in_the_environment_or_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(metrics.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert metrics.default_inception_file() is None
    cached = tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert metrics.default_inception_file() == cached
    monkeypatch.setenv(metrics.INCEPTION_ENV, str(tmp_path / "mine.pth"))
    assert metrics.default_inception_file() == tmp_path / "mine.pth"


def random_fid_inception_state() -> dict[str, torch.Tensor]:
    """Random weights of the FID InceptionV3 (torch-fidelity's keys are torchvision's Inception3 keys),
    He-initialised so that the features neither vanish nor explode."""
    from torchvision.models import Inception3

    torch.manual_seed(0)
    network = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return network.state_dict()


@pytest.mark.slow
def test_inception_loads_a_local_file_and_downloads_nothing(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download the Inception weights")

    monkeypatch.setattr(fidelity, "load_state_dict_from_url", no_download)
    state = random_fid_inception_state()
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    inception = load_inception(path)
    loaded = inception.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    a = extract_features(inception, list(random_images(3, seed=7)))
    b = extract_features(inception, list(shifted(random_images(3, seed=7), 60)))
    assert a.shape == (3, 2048) and a.abs().max() > 1e-3
    fid = frechet_distance(b, a)
    assert fid == pytest.approx(frechet_numpy(b.numpy(), a.numpy()), rel=1e-4)
    assert abs(frechet_distance(a, a)) < 1e-6 * fid
    # Another network's weights: one line naming the file and the first missing keys.
    del state["fc.bias"]
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(
        WeightsError, match=r"other.pth does not hold the FID InceptionV3 weights \(Missing key"
    ):
        load_inception(tmp_path / "other.pth")


# --- CLIP score -----------------------------------------------------------------------------------


def test_clip_score_is_100_cos_of_the_embeddings(tmp_path):
    images = random_images(5, seed=8)
    captions = ["a red circle", "a green square", "a blue triangle", "two cyan squares", "a yellow circle"]
    config, weights, expected = save_tiny_clip(tmp_path, images, captions)
    assert expected > 0.1
    features, processor = load_clip(str(config), str(weights))
    assert clip_score(features, processor, images, captions, batch_size=2) == pytest.approx(
        expected, rel=1e-4
    )
    # Floats in [0, 1] are the same images; larger images are resized to the model's 32 px first.
    assert clip_score(features, processor, images / 255, captions) == pytest.approx(expected, rel=1e-4)
    big = torch.nn.functional.interpolate(images.float(), scale_factor=2, mode="nearest").to(torch.uint8)
    assert clip_score(features, processor, big, captions) == pytest.approx(expected, abs=2.0)


def test_clip_weights_missing_or_unknown_are_clear(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv(metrics.CLIP_WEIGHTS_ENV, raising=False)
    config, weights, _ = save_tiny_clip(tmp_path, random_images(2, seed=9), ["a", "b"])
    missing = tmp_path / "gone.safetensors"
    with pytest.raises(
        ExtractorUnavailable, match=f"open_clip weights file not found: {missing}; pass --clip_weights"
    ):
        load_clip(str(config), str(missing))
    with pytest.raises(ExtractorUnavailable, match="no open_clip weights for 'tiny-clip'"):
        load_clip(str(config), None)
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        load_clip("ViT-Q-99", str(weights))
    with pytest.raises(ValueError, match="unknown pretrained tag 'nope' for open_clip 'ViT-B-32'"):
        load_clip("ViT-B-32", "nope")
    with caplog.at_level(logging.WARNING, logger="ldm.eval.metrics"):
        values, skipped = image_metrics(torch.rand(2, 3, 8, 8), ["a", "b"], ["clip"], clip_model=str(config))
    assert values == {} and list(skipped) == ["clip"]
    assert [r.getMessage() for r in caplog.records] == [f"clip skipped: {skipped['clip']}"]


def test_clip_weights_default_to_the_environment_then_a_cached_tag(monkeypatch):
    monkeypatch.delenv(metrics.CLIP_WEIGHTS_ENV, raising=False)
    tags = open_clip.list_pretrained_tags_by_model("ViT-B-32")
    monkeypatch.setattr(
        metrics, "cached_pretrained_file", lambda arch, tag: "/cache/x" if tag == tags[2] else None
    )
    assert metrics.default_clip_weights("ViT-B-32") == tags[2]
    monkeypatch.setattr(metrics, "cached_pretrained_file", lambda arch, tag: None)
    assert metrics.default_clip_weights("ViT-B-32") is None
    monkeypatch.setenv(metrics.CLIP_WEIGHTS_ENV, "/weights/mine.safetensors")
    assert metrics.default_clip_weights("ViT-B-32") == "/weights/mine.safetensors"
