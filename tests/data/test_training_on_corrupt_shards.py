"""A training run over shards salted with every kind of corruption finishes and reports exact counts."""

import pytest

from tests.conftest import run_cli
from tests.data.test_quality import png, write

pytestmark = pytest.mark.slow


def test_run_over_salted_shards(tmp_path):
    good = [
        {"__key__": f"g{i}", "png": png((255, 0, 0), (32, 32)), "txt": b"a red square"} for i in range(16)
    ]
    write(tmp_path / "000000.tar", good[:8] + [{"__key__": "no_image", "txt": b"text only"}])
    write(tmp_path / "000001.tar", [{"__key__": "bad", "png": b"garbage", "txt": b"x"}] + good[8:12])
    write(
        tmp_path / "000002.tar",
        good[12:]
        + [{"__key__": "no_caption", "png": png()}, {"__key__": "bad_text", "png": png(), "txt": b"\xff"}],
    )
    (tmp_path / "000003.tar").write_bytes(b"this is not a tar file at all" * 40)
    write(tmp_path / "val.tar", good[:8])
    result = run_cli(
        [
            "-m", "ldm.train", "experiment=debug", "data=webdataset", "data.resolution=32", "data.num_workers=0",
            f"data.train_shards='{tmp_path}/{{000000..000003}}.tar'", f"data.val_shards={tmp_path}/val.tar",
            "data.batch_size=8", "autoencoder.batch_size=8", "diffusion.batch_size=8",
            "autoencoder.max_steps=2", "diffusion.max_steps=2",
            f"hydra.run.dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false",
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [line for line in (result.stdout + result.stderr).splitlines() if "data: read" in line]
    # One report per stage; 16 good samples = 2 batches of 8 = exactly one pass per stage.
    expected = (
        "data: read 16 samples, skipped 5 corrupt "
        "(unreadable_image=1, missing_image=1, missing_caption=1, bad_text=1, unreadable_shard=1)"
    )
    assert len(reports) == 2, reports
    assert all(r.endswith(expected) for r in reports), reports


def test_too_little_data_for_one_batch_is_a_clear_error(tmp_path):
    write(tmp_path / "000000.tar", [{"__key__": f"g{i}", "png": png(), "txt": b"a"} for i in range(3)])
    result = run_cli(
        [
            "-m", "ldm.train", "experiment=debug", "data=webdataset", "data.resolution=32", "data.num_workers=0",
            f"data.train_shards={tmp_path}/000000.tar", f"data.val_shards={tmp_path}/000000.tar",
            "autoencoder.batch_size=8", f"hydra.run.dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false",
        ],
        timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "a training epoch gave no batch: 3 usable samples per pass" in result.stdout + result.stderr
