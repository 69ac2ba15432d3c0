"""Batches: images stacked in channels-last memory order, equal to torch's default collation."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate
from webdataset import TarWriter

from ldm.data.collate import collate_samples
from ldm.data.decode import decode_image, resize_and_crop, to_model_range
from ldm.training.datamodule import ShardDataModule


def jpeg(seed: int, size=(90, 70)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def decoded(seed: int) -> dict:
    pixels, size = decode_image(jpeg(seed), 32)
    pixels, crop = resize_and_crop(pixels, 32)
    return {
        "image": pixels,
        "caption": f"c{seed}",
        "original_size": torch.tensor(size),
        "crop": torch.tensor(crop),
    }


def test_batch_equals_default_collation_in_channels_last_memory():
    samples = [decoded(seed) for seed in range(5)]
    assert not samples[0]["image"].is_contiguous()  # the decoders' H x W x C memory
    ours, reference = collate_samples(samples), default_collate(samples)
    assert ours.keys() == reference.keys()
    assert ours["image"].shape == (5, 3, 32, 32) and ours["image"].dtype == torch.uint8
    assert ours["image"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ours["image"], reference["image"])
    assert ours["caption"] == reference["caption"] == [f"c{s}" for s in range(5)]
    assert torch.equal(ours["original_size"], reference["original_size"])
    assert torch.equal(ours["crop"], reference["crop"])


def test_model_range_is_contiguous_and_exact_from_either_layout():
    batch = collate_samples([decoded(seed) for seed in range(3)])["image"]
    contiguous = batch.contiguous()
    assert not batch.is_contiguous()
    ours = to_model_range(batch)
    assert ours.is_contiguous() and ours.dtype == torch.float32
    assert torch.equal(ours, to_model_range(contiguous))
    assert ours.min() >= -1 and ours.max() <= 1
    assert to_model_range(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]


def test_float_images_collate_contiguous():
    """Float images reach the models unconverted (model_inputs passes them on), so they stay contiguous."""
    samples = [{**decoded(seed), "image": to_model_range(decoded(seed)["image"])} for seed in range(3)]
    ours = collate_samples(samples)["image"]
    assert ours.is_contiguous() and torch.equal(ours, default_collate(samples)["image"])


@pytest.mark.parametrize(
    "samples",
    [[torch.ones(2)] * 3, [{"latent": torch.ones(4, 2, 2)}] * 2, [{"image": torch.ones(2, 3, 4, 4)}] * 2],
)
def test_other_samples_collate_as_torch_does(samples):
    ours, reference = collate_samples(samples), default_collate(samples)
    if isinstance(reference, dict):
        key = next(iter(reference))
        assert torch.equal(ours[key], reference[key]) and ours[key].is_contiguous()
    else:
        assert torch.equal(ours, reference)


class Images(IterableDataset):
    def __iter__(self):
        yield from (decoded(seed) for seed in range(8))


def test_worker_batches_arrive_intact():
    """Stacked in a DataLoader worker (shared memory), the pixels are those collated in-process."""
    expected = collate_samples(list(Images()))
    got = list(DataLoader(Images(), batch_size=4, num_workers=1, collate_fn=collate_samples))
    assert len(got) == 2
    assert torch.equal(torch.cat([b["image"] for b in got]), expected["image"])
    assert all(b["image"].is_contiguous(memory_format=torch.channels_last) for b in got)


def test_datamodule_batches_are_channels_last(tmp_path):
    with open(tmp_path / "000000.tar", "wb") as stream, TarWriter(stream) as writer:
        for i in range(6):
            writer.write({"__key__": f"{i:04d}", "jpg": jpeg(i), "txt": b"x"})
    module = ShardDataModule(
        [str(tmp_path / "000000.tar")],
        [str(tmp_path / "000000.tar")],
        batch_size=3,
        resolution=32,
        num_workers=0,
        shuffle_buffer=0,
        seed=0,
    )
    for loader in (module.train_dataloader(), module.val_dataloader()):
        batch = next(iter(loader))
        assert batch["image"].shape == (3, 3, 32, 32)
        assert batch["image"].is_contiguous(memory_format=torch.channels_last)
        assert module.on_after_batch_transfer(batch, 0)["image"].is_contiguous()
