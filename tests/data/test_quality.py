"""Corrupt data is skipped and counted by kind; filters; the skipped-fraction ceiling."""

import io
import json
import tarfile

import pytest
import torch
from PIL import Image
from webdataset import TarWriter

from ldm.config import DataFiltersConfig
from ldm.data.quality import DataQualityError, SampleCounter, SampleFilter
from ldm.data.shards import shard_dataset
from ldm.training.callbacks import DataQualityCallback


def png(color=(255, 0, 0), size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write(path, samples):
    with open(path, "wb") as stream, TarWriter(stream) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


def salted_shards(tmp_path):
    """Two shards with 6 good samples and one corrupt sample of each kind, plus a truncated shard."""
    first = write(
        tmp_path / "000000.tar",
        [
            {"__key__": "g0", "png": png(), "txt": b"good zero"},
            {"__key__": "bad_image", "png": b"\x89PNG not really", "txt": b"broken"},
            {"__key__": "g1", "png": png(), "txt": b"good one"},
            {"__key__": "no_image", "txt": b"text only"},
            {"__key__": "no_caption", "png": png()},
            {"__key__": "g2", "png": png(), "txt": b"good two"},
            {"__key__": "bad_text", "png": png(), "txt": b"\xff\xfe not utf-8 \xc3"},
            {"__key__": "g3", "png": png(), "txt": b"good three"},
        ],
    )
    second = write(
        tmp_path / "000001.tar",
        [
            {"__key__": "g4", "png": png(), "txt": b"good four"},
            {"__key__": "g5", "png": png(), "txt": b"good five"},
        ],
    )
    # A third shard cut inside the second sample's image: the first sample survives, the second is lost.
    full = write(
        tmp_path / "full.tar",
        [
            {"__key__": "g6", "png": png(), "txt": b"good six"},
            {"__key__": "lost", "png": png((0, 0, 255)), "txt": b"x"},
        ],
    )
    data = open(full, "rb").read()
    with tarfile.open(full) as tar:
        lost_image = [m for m in tar.getmembers() if m.name == "lost.png"][0]
    truncated = tmp_path / "000002.tar"
    truncated.write_bytes(data[: lost_image.offset_data + 10])
    return [first, second, str(truncated)]


PLANTED = {
    "unreadable_image": 1,
    "missing_image": 1,
    "missing_caption": 1,
    "bad_text": 1,
    "unreadable_shard": 1,
}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_corrupt_sample_is_skipped_and_counted(tmp_path, num_workers):
    urls = salted_shards(tmp_path)
    stream = shard_dataset(urls, resolution=16, shuffle=False, shuffle_buffer=0, seed=0)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers)
    samples = list(loader)
    assert sorted(s["key"] for s in samples) == ["g0", "g1", "g2", "g3", "g4", "g5", "g6"]
    totals = stream.counter.totals()  # summed over the workers, through shared memory
    assert {k: v for k, v in totals.items() if v and k != "read"} == PLANTED
    assert totals["read"] == 7
    g0 = next(s for s in samples if s["key"] == "g0")
    assert g0["original_size"].tolist() == [30, 40] and g0["image"].shape == (3, 16, 16)


def test_filters_on_metadata_and_caption():
    f = SampleFilter(DataFiltersConfig(min_width=256, max_aspect=2.0, min_aesthetic=5.0, max_watermark=0.5))
    good = {"original_width": 512, "original_height": 300, "aesthetic": 6.1, "pwatermark": 0.1}
    assert f.needs_metadata and f.keep(good, "a cat")
    assert not f.keep({**good, "original_width": 200}, "a cat")
    assert not f.keep({**good, "original_width": 700}, "a cat")  # aspect 2.33
    assert not f.keep({**good, "aesthetic": 4.9}, "a cat")
    assert not f.keep({**good, "pwatermark": 0.9}, "a cat")
    assert not f.keep({"original_width": 512, "original_height": 300}, "a cat")  # no aesthetic score
    captions = SampleFilter(DataFiltersConfig(min_caption_length=3, max_caption_length=10))
    assert not captions.needs_metadata and captions.active
    assert captions.keep({}, "a cat") and not captions.keep({}, "ab") and not captions.keep({}, "a" * 11)
    assert not SampleFilter(DataFiltersConfig()).active


def test_filters_count_apart_from_corruption(tmp_path):
    url = write(
        tmp_path / "000000.tar",
        [
            {
                "__key__": "big",
                "png": png(),
                "txt": b"big",
                "json": json.dumps({"width": 800, "height": 600}).encode(),
            },
            {
                "__key__": "small",
                "png": png(),
                "txt": b"x",
                "json": json.dumps({"width": 80, "height": 60}).encode(),
            },
            {"__key__": "nometa", "png": png(), "txt": b"no json"},
        ],
    )
    stream = shard_dataset(
        [url],
        resolution=16,
        shuffle=False,
        shuffle_buffer=0,
        seed=0,
        sample_filter=SampleFilter(DataFiltersConfig(min_width=256)),
    )
    assert [s["key"] for s in stream] == ["big"]
    totals = stream.counter.totals()
    assert totals["filtered"] == 1 and totals["bad_metadata"] == 1 and totals["read"] == 1


class _Module:
    def __init__(self):
        self.logged = {}

    def log_dict(self, values, **kwargs):
        self.logged.update(values)


class _Trainer:
    def __init__(self, counter):
        self.datamodule = type("DM", (), {"train_counter": counter})()
        self.global_step = 0


def test_callback_reports_and_stops_mostly_broken_data():
    counter = SampleCounter()
    callback = DataQualityCallback(max_skip_fraction=0.5, min_samples=10)
    trainer, module = _Trainer(counter), _Module()
    for _ in range(4):
        counter.read()
    counter.skip("unreadable_image", "test")
    counter.skip("unreadable_image", "test")
    for _ in range(5):
        counter.skip("filtered", "test")  # filtered is not corruption
    callback.on_train_batch_end(trainer, module, None, {}, 0)
    assert module.logged == {"data/read": 4.0, "data/corrupt": 2.0}
    for _ in range(12):
        counter.skip("bad_text", "test")
    with pytest.raises(DataQualityError, match=r"14 of 23 samples read so far were corrupt .*bad_text=12"):
        callback.on_train_batch_end(trainer, module, None, {}, 1)
