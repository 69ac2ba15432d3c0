"""Tests of the webdataset streaming pipeline and its DataModule (ldm/data/shards.py)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from webdataset import TarWriter

from ldm.config import DataConfig
from ldm.data.shapes import write_shapes_dataset
from ldm.data.shards import shard_dataset
from ldm.training.datamodule import ShardDataModule, build_datamodule


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    """16 training samples in 4 shards of 4, and 5 validation samples in shards of 4 and 1."""
    root = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(root, resolution=32, seed=0, num_train=16, num_val=5, samples_per_shard=4)


def written_samples(paths: list[str]) -> list[tuple[str, str, np.ndarray]]:
    """(key, caption, HxWx3 uint8 pixels) of every sample in the shards, in file order."""
    samples = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return [
        (key, members["txt"].decode(), np.asarray(Image.open(io.BytesIO(members["png"]))))
        for key, members in samples.items()
    ]


def make_module(shapes_set, **overrides) -> ShardDataModule:
    arguments = {"batch_size": 2, "resolution": 32, "num_workers": 0, "shuffle_buffer": 8, "seed": 0}
    return ShardDataModule(shapes_set.train, shapes_set.val, **{**arguments, **overrides})


def keys_of(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


def test_stream_returns_exactly_the_written_samples(shapes_set):
    expected = written_samples(shapes_set.train)
    stream = shard_dataset(shapes_set.train, resolution=32, shuffle=False, shuffle_buffer=100, seed=0)
    samples = list(stream)
    assert [s["key"] for s in samples] == [key for key, _, _ in expected] == [f"{i:09d}" for i in range(16)]
    for sample, (_, caption, pixels) in zip(samples, expected, strict=True):
        assert sample["caption"] == caption
        image = sample["image"]
        assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
        # PNG is lossless: 0 -> -1 and 255 -> 1 exactly, and every value in between.
        reference = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
        assert torch.equal(image, reference)
        assert image.min() == -1.0 and image.max() == 1.0


def test_validation_batches_are_ordered_complete_and_stable(shapes_set):
    module = make_module(shapes_set)
    first = list(module.val_dataloader())
    second = list(module.val_dataloader())
    assert [len(b["key"]) for b in first] == [2, 2, 1]  # the last partial batch is kept
    assert keys_of(first) == keys_of(second) == [f"{i:09d}" for i in range(5)]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, second, strict=True))
    batch = first[0]
    assert batch["image"].shape == (2, 3, 32, 32)
    assert isinstance(batch["caption"], list) and all(isinstance(c, str) for c in batch["caption"])


def test_training_order_changes_each_epoch_and_is_reproducible(shapes_set):
    loader = make_module(shapes_set).train_dataloader()
    epochs = [keys_of(loader) for _ in range(3)]
    all_keys = sorted(f"{i:09d}" for i in range(16))
    assert all(sorted(keys) == all_keys for keys in epochs)  # each epoch is one full pass
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]
    assert epochs[0] != all_keys  # shuffled at all

    # A fresh module with the same seed replays the same epochs; another seed does not.
    again = make_module(shapes_set).train_dataloader()
    assert [keys_of(again) for _ in range(3)] == epochs
    other = make_module(shapes_set, seed=1).train_dataloader()
    assert keys_of(other) != epochs[0]


def test_set_epoch_replays_an_epoch(shapes_set):
    stream = shard_dataset(shapes_set.train, resolution=32, shuffle=True, shuffle_buffer=8, seed=3)
    epochs = [[s["key"] for s in stream] for _ in range(3)]
    stream.set_epoch(1)
    assert [s["key"] for s in stream] == epochs[1]
    assert [s["key"] for s in stream] == epochs[2]


def test_training_drops_the_last_partial_batch(shapes_set):
    loader = make_module(shapes_set, batch_size=3).train_dataloader()
    sizes = [len(batch["key"]) for batch in loader]
    assert sizes == [3] * 5  # 16 samples: 5 full batches, 1 sample dropped


def test_two_workers_read_every_sample_once_per_pass(shapes_set):
    loader = make_module(shapes_set, num_workers=2, batch_size=2).train_dataloader()
    assert loader.persistent_workers
    passes = [keys_of(loader) for _ in range(2)]
    for keys in passes:
        assert sorted(keys) == sorted(f"{i:09d}" for i in range(16))
    assert passes[0] != passes[1]
    # Reproducible with workers too.
    replay = make_module(shapes_set, num_workers=2, batch_size=2).train_dataloader()
    assert [keys_of(replay) for _ in range(2)] == passes


def encode(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"quality": 95} if format == "JPEG" else {}))
    return buffer.getvalue()


def test_other_sizes_and_modes_are_resized_cropped_and_made_rgb(tmp_path):
    # 80x40: green in the columns the centre crop keeps (20..60), red outside them.
    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    wide[:, :, 0] = 255
    wide[:, 20:60] = (0, 255, 0)
    wide_image = Image.fromarray(wide)
    palette = Image.new("P", (32, 32))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(1, (0, 0, 32, 16))
    samples = {
        "wide": ("jpg", encode(wide_image, "JPEG")),
        "gray": ("png", encode(Image.new("L", (50, 33), 100), "PNG")),
        "rgba": ("png", encode(Image.new("RGBA", (32, 32), (10, 20, 30, 0)), "PNG")),
        "palette": ("png", encode(palette, "PNG")),
    }
    path = tmp_path / "000000.tar"
    with open(path, "wb") as stream, TarWriter(stream) as writer:
        for key, (extension, payload) in samples.items():
            writer.write({"__key__": key, extension: payload, "txt": key.encode()})

    decoded = {
        s["key"]: s["image"]
        for s in shard_dataset([str(path)], resolution=32, shuffle=False, shuffle_buffer=0, seed=0)
    }
    assert all(image.shape == (3, 32, 32) for image in decoded.values())

    # Agrees with torchvision's resize-short-side + centre crop of the same decoded jpg.
    jpg = Image.open(io.BytesIO(samples["wide"][1])).convert("RGB")
    reference = np.asarray(TF.center_crop(TF.resize(jpg, 32, TF.InterpolationMode.BICUBIC), 32))
    expected = torch.from_numpy(reference.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
    # torchvision's uint8 kernels on tensors vs PIL's: the same bicubic, rounded apart by at most a level.
    assert (decoded["wide"] - expected).abs().max() <= 1.01 / 127.5
    centre = (decoded["wide"][:, :, 4:28] + 1) * 127.5  # away from the crop's edges: green
    assert centre[1].min() > 240 and centre[0].max() < 20 and centre[2].max() < 20

    assert torch.allclose(decoded["gray"], torch.full((3, 32, 32), 100 / 127.5 - 1))
    rgba = (decoded["rgba"] + 1) * 127.5
    assert torch.allclose(rgba, torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1).expand(3, 32, 32), atol=1e-4)
    pal = (decoded["palette"] + 1) * 127.5
    assert torch.allclose(pal[:, :16], torch.tensor([10.0, 200.0, 30.0]).view(3, 1, 1), atol=1e-4)
    assert torch.allclose(pal[:, 16:], torch.zeros(3, 16, 32), atol=1e-4)


def test_a_sample_without_an_image_is_skipped_and_counted(tmp_path):
    path = tmp_path / "000000.tar"
    good = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(good, format="PNG")
    with open(path, "wb") as stream, TarWriter(stream) as writer:
        writer.write({"__key__": "only-text", "txt": b"a red circle"})
        writer.write({"__key__": "good", "png": good.getvalue(), "txt": b"a red square"})
    stream = shard_dataset([str(path)], resolution=32, shuffle=False, shuffle_buffer=0, seed=0)
    assert [s["key"] for s in stream] == ["good"]
    assert stream.counter.totals()["missing_image"] == 1


def test_empty_shard_list_yields_nothing():
    assert list(shard_dataset([], resolution=32, shuffle=True, shuffle_buffer=4, seed=0)) == []


def test_build_datamodule_generates_the_shapes_set(tmp_path):
    cfg = DataConfig(
        root=str(tmp_path),
        resolution=16,
        num_train=6,
        num_val=2,
        samples_per_shard=3,
        batch_size=2,
        num_workers=0,
    )
    module = build_datamodule(cfg)
    assert len(module.train_urls) == 2 and len(module.val_urls) == 1
    assert all(
        url.startswith(str(tmp_path / "16px-seed0-n6-2")) for url in module.train_urls + module.val_urls
    )
    batches = list(module.train_dataloader())
    assert len(batches) == 3 and batches[0]["image"].shape == (2, 3, 16, 16)


def test_build_datamodule_rejects_unknown_data_sets():
    expected = r"^unknown data set 'laion'; available: shapes, shapes_compose, webdataset$"
    with pytest.raises(ValueError, match=expected):
        build_datamodule(DataConfig(name="laion"))


class _RecordKeys(pl.LightningModule):
    """A one-parameter model that records which keys each training step saw."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[str]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch["key"])
        return (self.weight - batch["image"].mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_lightning_runs_on_past_the_end_of_an_epoch(shapes_set, num_workers):
    module = make_module(shapes_set, batch_size=4, num_workers=num_workers)
    model = _RecordKeys()
    trainer = pl.Trainer(
        max_steps=10,  # 4 batches per epoch: two full epochs and half of a third
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, module)
    all_keys = sorted(f"{i:09d}" for i in range(16))
    assert sorted(model.seen) == [0, 1, 2]
    assert sorted(model.seen[0]) == sorted(model.seen[1]) == all_keys
    assert len(model.seen[2]) == 8
    assert model.seen[0] != model.seen[1]


def test_loaders_move_uint8_and_the_model_gets_the_float_images(shapes_set):
    module = make_module(shapes_set, batch_size=4)
    batch = next(iter(module.val_dataloader()))
    assert batch["image"].dtype == torch.uint8
    on_device = module.on_after_batch_transfer(batch, 0)
    stream = shard_dataset(shapes_set.val, resolution=32, shuffle=False, shuffle_buffer=0, seed=0)
    expected = torch.stack([sample["image"] for _, sample in zip(range(4), stream)])
    assert on_device["image"].dtype == torch.float32 and torch.equal(on_device["image"], expected)
    assert on_device["image"].min() >= -1 and on_device["image"].max() <= 1


def test_loader_prefetches_as_configured_and_pins_memory_only_for_a_cuda_model(shapes_set):
    from types import SimpleNamespace

    module = make_module(shapes_set, num_workers=1, prefetch_factor=3)
    module.setup("fit")
    loader = module.train_dataloader()
    assert loader.prefetch_factor == 3 and loader.pin_memory is False  # no trainer: nothing on CUDA
    on = {"cuda": True, "cpu": False}
    for device, pinned in on.items():
        module.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
        assert module.pins_memory() is pinned
    module.pin_memory = False
    assert module.pins_memory() is False  # data.pin_memory=false: never
    assert make_module(shapes_set, num_workers=0).train_dataloader().prefetch_factor is None
    with pytest.raises(ValueError, match="prefetch_factor must be at least 1"):
        make_module(shapes_set, prefetch_factor=0)
