"""Shards split across ranks and DataLoader workers: exactly once per pass; equal batches when resampled."""

import collections

import pytest
import torch
from webdataset import TarWriter

from ldm.config import DataConfig
from ldm.data.shards import shard_dataset
from ldm.data.urls import expand_sources, mixture_weights
from ldm.training.datamodule import build_datamodule
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


def test_weighted_sources_get_their_share_of_a_resampled_stream(tmp_path):
    # Source a: 2 shards, source b: 6 shards, 2 samples each; weights 3:1 whatever their shard counts.
    sources = {"a": 2, "b": 6}
    for name, n in sources.items():
        for i in range(n):
            with open(tmp_path / f"{name}-{i}.tar", "wb") as stream, TarWriter(stream) as writer:
                for j in range(2):
                    writer.write({"__key__": f"{name}{i}-{j}", "png": png(size=(8, 8)), "txt": b"x"})
    spec = f"{tmp_path}/a-{{0..1}}.tar::{tmp_path}/b-{{0..5}}.tar"
    sources_urls = expand_sources(spec)
    assert [len(u) for u in sources_urls] == [2, 6]
    weights = mixture_weights(sources_urls, [3.0, 1.0])
    assert weights == [1.5, 1.5] + [1 / 6] * 6
    options = dict(shuffle=True, shuffle_buffer=0, resampled=True, batches_per_epoch=100, batch_size=4)
    stream = shard_dataset(sum(sources_urls, []), resolution=8, seed=0, url_weights=weights, **options)
    keys = [sample["key"] for sample in stream]
    share = sum(key.startswith("a") for key in keys) / len(keys)
    # 200 shard draws: the share's standard deviation is sqrt(0.75 * 0.25 / 200) = 0.031.
    assert len(keys) == 400 and abs(share - 0.75) < 0.1


def test_source_weights_are_checked():
    with pytest.raises(ValueError, match="2 source weights for 3 sources"):
        mixture_weights([["a"], ["b"], ["c"]], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        mixture_weights([["a"], ["b"]], [0.0, 0.0])
    with pytest.raises(ValueError, match="weighted sources need resampled mode"):
        shard_dataset(
            ["a", "b"], resolution=8, seed=0, shuffle=True, shuffle_buffer=0, url_weights=[1.0, 1.0]
        )


def test_data_config_weights_need_as_many_sources_and_resampled_mode(tmp_path):
    for i in range(2):
        with open(tmp_path / f"{i}.tar", "wb") as stream, TarWriter(stream) as writer:
            writer.write({"__key__": f"k{i}", "png": png(size=(8, 8)), "txt": b"x"})
    shards = f"{tmp_path}/0.tar::{tmp_path}/1.tar"
    config = DataConfig(name="webdataset", train_shards=shards, resolution=8, train_weights=[1.0, 3.0])
    with pytest.raises(ValueError, match="weighted sources need resampled mode"):
        build_datamodule(config)
    config.resampled = True
    assert build_datamodule(config).train_dataset.url_weights == [1.0, 3.0]
    config.train_weights = [1.0]
    with pytest.raises(ValueError, match="1 source weights for 2 sources"):
        build_datamodule(config)
