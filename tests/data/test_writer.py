import csv
import json

import pytest
import torch
from PIL import Image

from ldm.data.shards import shard_dataset
from ldm.data.urls import expand_urls
from ldm.data.writer import write_image_folder

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i, color in enumerate(COLORS):
        path = root / ("sub" if i == 4 else "") / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.new("RGB", (40 + i, 30), color).save(path)
        if i != 3:  # img3 has no caption
            path.with_suffix(".txt").write_text(f"caption {i}\n")
    (root / "broken.png").write_bytes(b"not a png")
    (root / "broken.txt").write_text("broken")
    return root


def test_folder_with_sidecars_round_trips(folder, tmp_path):
    report = write_image_folder(folder, tmp_path / "shards", samples_per_shard=2)
    assert report.written == 4 and report.skipped == {"missing_caption": 1, "unreadable_image": 1}
    assert [p.rsplit("/", 1)[-1] for p in report.shards] == ["000000.tar", "000001.tar"]
    samples = list(shard_dataset(report.shards, resolution=16, shuffle=False, shuffle_buffer=0, seed=0))
    assert [s["caption"] for s in samples] == ["caption 0", "caption 1", "caption 2", "caption 4"]
    assert [s["original_size"].tolist() for s in samples] == [[30, 40], [30, 41], [30, 42], [30, 44]]
    red = (samples[0]["image"] + 1) * 127.5  # jpg, so approximately
    assert red[0].mean() > 240 and red[1:].mean() < 15
    import tarfile

    with tarfile.open(report.shards[1]) as tar:
        meta = json.load(tar.extractfile([m for m in tar.getmembers() if m.name.endswith(".json")][-1]))
    assert meta == {"width": 44, "height": 30, "original_file": "sub/img4.jpg"}
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest == {
        "skipped": {"missing_caption": 1, "unreadable_image": 1},
        "shards": ["000000.tar", "000001.tar"],
        "samples": 4,
    }


def test_caption_table(folder, tmp_path):
    table = tmp_path / "captions.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption"])
        writer.writerow(["img3.png", "from the table"])
    report = write_image_folder(folder, tmp_path / "shards", captions=table)
    assert report.written == 1 and report.skipped == {"missing_caption": 5}  # 4 others + broken.png
    (sample,) = shard_dataset(report.shards, resolution=8, shuffle=False, shuffle_buffer=0, seed=0)
    assert sample["caption"] == "from the table" and torch.is_tensor(sample["image"])


def test_url_specs(tmp_path):
    assert expand_urls("/d/{000000..000002}.tar") == ["/d/000000.tar", "/d/000001.tar", "/d/000002.tar"]
    assert expand_urls("/a/{0..1}.tar::pipe:curl -s x/{5..6}.tar") == [
        "/a/0.tar",
        "/a/1.tar",
        "pipe:curl -s x/5.tar",
        "pipe:curl -s x/6.tar",
    ]
    listing = tmp_path / "urls.txt"
    listing.write_text("# shards\n/x/{0..1}.tar\n\n/y/9.tar\n")
    assert expand_urls([f"@{listing}", "/z.tar"]) == ["/x/0.tar", "/x/1.tar", "/y/9.tar", "/z.tar"]
    with pytest.raises(FileNotFoundError):
        expand_urls("@/no/such/file.txt")
    with pytest.raises(ValueError):
        expand_urls(["", " "])

