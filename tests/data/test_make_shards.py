"""ldm/data/make_shards.py: an image folder becomes the shards it reports; errors are one line."""

import pytest
from PIL import Image

from ldm.data.make_shards import run
from ldm.data.shards import shard_dataset
from tests.conftest import run_cli


def test_folder_becomes_shards_and_the_training_command(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for i in range(5):
        Image.new("RGB", (20, 16), (50 * i, 0, 0)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"caption {i}")
    (images / "5.png").write_bytes(b"not a png")
    (images / "5.txt").write_text("broken")
    out = tmp_path / "shards"
    report = run(["--images", str(images), "--out", f"{out}/", "--samples-per-shard", "2"])
    assert (report.written, report.skipped) == (5, {"unreadable_image": 1})
    assert sorted(p.name for p in out.glob("*.tar")) == ["000000.tar", "000001.tar", "000002.tar"]
    samples = list(shard_dataset(report.shards, resolution=8, shuffle=False, shuffle_buffer=0, seed=0))
    assert [s["caption"] for s in samples] == [f"caption {i}" for i in range(5)]
    # The command line prints the training command over the shards it wrote.
    result = run_cli(["-m", "ldm.data.make_shards", "--images", str(images), "--out", f"{out}/"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote 5 samples in 1 shards" in result.stderr and "(skipped: unreadable_image=1)" in result.stderr
    assert f"\"data.train_shards='{out}/{{000000..000000}}.tar'\"" in result.stderr


@pytest.mark.parametrize("command", [["scripts/make_shards.py"], ["-m", "ldm.data.make_shards"]])
def test_errors_are_one_line(tmp_path, monkeypatch, command):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    result = run_cli([*command, "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert (
        result.returncode == 2
        and result.stderr.strip() == f"error: image folder not found: {tmp_path / 'nope'}"
    )
