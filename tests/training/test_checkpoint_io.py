"""ldm/training/checkpoint_io.py: checkpoints stream to disk, replace the target whole, and fail cleanly."""

from __future__ import annotations

import os
import tracemalloc

import pytest
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from ldm.training.checkpoint_io import StreamingCheckpointIO

MB = 1 << 20


def checkpoint_of(megabytes: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(megabytes * MB // 4, generator=generator)
    return {"state_dict": {"w": weights}, "global_step": seed}


def python_peak(save, checkpoint: dict, path) -> int:
    """Peak of Python-level allocations (where an in-memory copy of the file would live) during `save`."""
    tracemalloc.start()
    try:
        save(checkpoint, path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_saves_a_checkpoint_that_loads(tmp_path):
    path = tmp_path / "sub" / "last.ckpt"
    checkpoint = checkpoint_of(1)
    StreamingCheckpointIO().save_checkpoint(checkpoint, path)
    loaded = torch.load(path, weights_only=True)
    assert (
        torch.equal(loaded["state_dict"]["w"], checkpoint["state_dict"]["w"]) and loaded["global_step"] == 0
    )
    assert os.listdir(path.parent) == ["last.ckpt"]  # no temporary file left
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # as a plainly created file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_does_not_build_the_file_in_memory(tmp_path):
    checkpoint = checkpoint_of(32)
    lightning = python_peak(TorchCheckpointIO().save_checkpoint, checkpoint, tmp_path / "lightning.ckpt")
    streaming = python_peak(StreamingCheckpointIO().save_checkpoint, checkpoint, tmp_path / "streaming.ckpt")
    assert lightning > 32 * MB  # Lightning's writer holds the whole serialised file
    assert streaming < 4 * MB
    assert (tmp_path / "streaming.ckpt").read_bytes() == (tmp_path / "lightning.ckpt").read_bytes()


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    StreamingCheckpointIO().save_checkpoint(checkpoint_of(1, seed=1), path)
    before = path.read_bytes()

    def fail_midway(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        StreamingCheckpointIO().save_checkpoint(checkpoint_of(1, seed=2), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_rejects_storage_options(tmp_path):
    with pytest.raises(TypeError, match="takes no storage_options"):
        StreamingCheckpointIO().save_checkpoint({}, tmp_path / "x.ckpt", storage_options={"a": 1})


def test_training_writes_checkpoints_with_it(tmp_path):
    from ldm.config import TrainConfig
    from ldm.training.train import build_trainer

    trainer = build_trainer(TrainConfig(), tmp_path, "diffusion", 1, [])
    assert isinstance(trainer.strategy.checkpoint_io, StreamingCheckpointIO)


def test_loads_with_weights_only_by_default(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    StreamingCheckpointIO().save_checkpoint(checkpoint_of(1), path)
    seen = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (seen.append(k.get("weights_only")), load(*a, **k))[1])
    assert StreamingCheckpointIO().load_checkpoint(path)["global_step"] == 0
    StreamingCheckpointIO().load_checkpoint(path, weights_only=False)
    assert seen == [True, False]
