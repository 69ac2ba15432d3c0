"""Shards split across ranks and DataLoader workers: exactly once per pass; equal batches when resampled."""

import collections

import pytest
import torch
from webdataset import TarWriter

from ldm.data.shards import shard_dataset
from tests.data.test_quality import png

N_SHARDS, PER_SHARD = 8, 6


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    urls = []
    for i in range(N_SHARDS):
        path = root / f"{i:06d}.tar"
        with open(path, "wb") as stream, TarWriter(stream) as writer:
            for j in range(PER_SHARD):
                writer.write({"__key__": f"s{i}-{j}", "png": png(size=(8, 8)), "txt": f"{i} {j}".encode()})
        urls.append(str(path))
    return urls


def keys_of_rank(monkeypatch, urls, rank, epoch, **options):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    stream = shard_dataset(urls, resolution=8, seed=5, **options)
    stream.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2, drop_last=False)
    return [list(batch["key"]) for batch in loader]


@pytest.mark.parametrize("epoch", [0, 1])
def test_two_ranks_two_workers_see_every_sample_exactly_once(monkeypatch, shards, epoch):
    options = dict(shuffle=True, shuffle_buffer=5)
    seen = collections.Counter()
    for rank in (0, 1):
        for batch in keys_of_rank(monkeypatch, shards, rank, epoch, **options):
            seen.update(batch)
    assert len(seen) == N_SHARDS * PER_SHARD and set(seen.values()) == {1}


def test_resampled_mode_gives_every_rank_the_same_number_of_batches(monkeypatch, shards):
    options = dict(shuffle=True, shuffle_buffer=5, resampled=True, batches_per_epoch=5, batch_size=4)
    batches = {rank: keys_of_rank(monkeypatch, shards[:3], rank, 0, **options) for rank in (0, 1)}
    assert [len(b) for b in batches.values()] == [5, 5]
    assert all(len(batch) == 4 for b in batches.values() for batch in b)
    assert batches[0] != batches[1]  # ranks draw independently
    again = keys_of_rank(monkeypatch, shards[:3], 0, 0, **options)
    assert again == batches[0]  # and reproducibly
