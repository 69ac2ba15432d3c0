"""Tests for tests/training/wandb_log.py, the reader of W&B run files, against files W&B itself wrote."""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.training.wandb_log import BLOCK, CorruptLog, OfflineRun, read_payloads

WRITE = textwrap.dedent(
    """
    import sys
    import wandb

    run = wandb.init(project="reader", dir=sys.argv[1], mode="offline", config={"width": 7})
    for i, n in enumerate([10, 50_000, 3, 70_000, 20]):  # records across one and several 32 KiB blocks
        run.log({"text": str(i) * n, "n": n})
    run.finish()
    """
)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reader")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(folder), HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    done = subprocess.run(
        [sys.executable, "-c", WRITE, str(folder)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    return path


def test_records_spanning_blocks_read_back_whole(run_file):
    assert run_file.stat().st_size > 3 * BLOCK
    run = OfflineRun.read(run_file)
    assert run.project == "reader" and run.config["width"] == 7
    rows = [row for row in run.history if "text" in row]
    assert [row["n"] for row in rows] == [10, 50_000, 3, 70_000, 20]
    assert all(row["text"] == str(i) * row["n"] for i, row in enumerate(rows))


def test_a_flipped_byte_is_caught(run_file):
    data = bytearray(run_file.read_bytes())
    data[BLOCK + 100] ^= 0x01
    with pytest.raises(CorruptLog):
        read_payloads(bytes(data))
    with pytest.raises(CorruptLog, match="W&B header"):
        read_payloads(b"LDB!" + bytes(data[4:]))
