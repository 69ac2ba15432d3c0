"""ldm/training/distributed.py: rank 0 writes the built-in set, the other ranks wait for it."""

from __future__ import annotations

import pytest

from ldm.config import DataConfig
from ldm.data.shards import existing_synthetic_set
from ldm.training.distributed import global_rank, prepare_data


@pytest.mark.parametrize("name", ["shapes", "shapes_compose"])
def test_rank_0_writes_and_other_ranks_wait_for_the_set(tmp_path, monkeypatch, name):
    cfg = DataConfig(
        name=name, root=str(tmp_path), resolution=32, num_train=4, num_val=2, samples_per_shard=2
    )
    monkeypatch.setenv("RANK", "1")
    assert global_rank() == 1
    with pytest.raises(ValueError, match=f"rank 1 waited 0 s for rank 0 to write the {name} set"):
        prepare_data(cfg, timeout=0.0, poll=0.01)
    assert existing_synthetic_set(cfg) is None and list(tmp_path.iterdir()) == []
    monkeypatch.setenv("RANK", "0")
    prepare_data(cfg)
    written = existing_synthetic_set(cfg)
    assert written is not None and len(written.train) == 2 and len(written.val) == 1
    monkeypatch.setenv("RANK", "1")
    prepare_data(cfg, timeout=0.0)  # complete: returns at once


def test_other_data_needs_no_preparation(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    prepare_data(DataConfig(name="webdataset", root=str(tmp_path), train_shards="x.tar"))
    assert list(tmp_path.iterdir()) == []
