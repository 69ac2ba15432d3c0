"""Cached latents (ldm/data/latents.py): the shards agree with on-the-fly encoding, and misuse fails clearly."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from webdataset import TarWriter

from ldm.conditioning.dropout import kept_captions
from ldm.conditioning.text import OpenCLIPTextEncoder
from ldm.config import DataConfig, TrainConfig
from ldm.data.decode import ImageDecoder, model_inputs
from ldm.data.latents import (
    LatentDecoder,
    check_cache_text_encoder,
    checkpoint_fingerprint,
    image_batches,
    npy_bytes,
    read_cache_info,
    weights_fingerprint,
    write_cache_info,
    write_latent_shards,
)
from ldm.data.shapes import write_shapes_dataset
from ldm.data.stream import ShardStream
from ldm.training.callbacks import CachedTextCheck
from ldm.training.datamodule import build_datamodule
from ldm.training.diffusion_module import LatentDiffusionModule
from ldm.training.train import run
from tests.conftest import save_tiny_autoencoder, tiny_module_configs


def write_cache(root, text_encoder=None) -> dict:
    """A tiny autoencoder (f=2), 12 shapes images in 3 shards, and their latents (and text-encoder
    states, given `text_encoder`) cached in shards of 5."""
    config = tiny_module_configs()["autoencoder"]
    ckpt = root / "ae.ckpt"
    model = save_tiny_autoencoder(ckpt, config, seed=0)
    images = write_shapes_dataset(
        root / "images", resolution=32, seed=0, num_train=12, num_val=4, samples_per_shard=4
    )
    out = root / "cache"
    out.mkdir()
    splits = {}
    for split, urls in (("train", images.train), ("val", images.val)):
        loader, _ = image_batches(urls, resolution=32, batch_size=3)
        splits[split] = write_latent_shards(
            model, loader, out, split, samples_per_shard=5, text_encoder=text_encoder
        )
    info = {
        "autoencoder": {"fingerprint": checkpoint_fingerprint(ckpt), "checkpoint": str(ckpt)},
        "resolution": 32,
        "moments_shape": splits["train"]["moments_shape"],
        "dtype": "float32",
        "splits": splits,
    }
    if text_encoder is not None:
        info["text_encoder"] = {
            "fingerprint": weights_fingerprint(text_encoder.state_dict()),
            "context_shape": splits["train"]["context_shape"],
        }
    write_cache_info(out, info)
    return {"ckpt": ckpt, "model": model, "images": images, "out": out, "splits": splits, "config": config}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Cached latents without text embeddings."""
    return write_cache(tmp_path_factory.mktemp("latents"))


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    """Cached latents with the states of tiny_module_configs()'s text encoder."""
    encoder = OpenCLIPTextEncoder(tiny_module_configs()["conditioner"])
    return {**write_cache(tmp_path_factory.mktemp("latents_text"), encoder), "encoder": encoder}


def read_all(urls: list[str], decoder) -> dict[str, dict]:
    stream = ShardStream(urls, decoder=decoder, shuffle=False, shuffle_buffer=0, seed=0, split_nodes=False)
    return {sample["key"]: sample for sample in stream}


def train_urls(cache) -> list[str]:
    return [str(cache["out"] / f"train-{i:06d}.tar") for i in range(cache["splits"]["train"]["shards"])]


def test_cached_moments_equal_the_encoder_output(cache):
    assert cache["splits"]["train"] == {
        "pattern": "train-{000000..000002}.tar",
        "shards": 3,  # 12 samples in shards of 5
        "samples": 12,
        "moments_shape": [8, 16, 16],  # mean and logvar of 4 channels, 32 / 2
    }
    cached = read_all(train_urls(cache), LatentDecoder(moments_shape=(8, 16, 16)))
    images = read_all(cache["images"].train, ImageDecoder(32))
    assert sorted(cached) == sorted(images) and len(cached) == 12
    for key, sample in cached.items():
        assert sample["caption"] == images[key]["caption"]
        with torch.no_grad():
            posterior = cache["model"].encode(images[key]["image"][None])
        mean, logvar = sample["moments"].chunk(2, dim=0)
        torch.testing.assert_close(mean, posterior.mean[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(logvar, torch.chunk(posterior.parameters[0], 2)[1], atol=1e-5, rtol=0)


def test_float16_cache_rounds_to_half_precision(cache, tmp_path):
    loader, _ = image_batches(cache["images"].val, resolution=32, batch_size=4)
    written = write_latent_shards(cache["model"], loader, tmp_path, "val", dtype="float16")
    assert written["samples"] == 4
    half = read_all([str(tmp_path / "val-000000.tar")], LatentDecoder())
    full = read_all([str(cache["out"] / "val-000000.tar")], LatentDecoder())
    for key, sample in half.items():
        assert sample["moments"].dtype == torch.float32  # decoded to float32 for training
        assert torch.equal(sample["moments"], sample["moments"].half().float())  # float16 values
        # float16 rounding: a relative error of at most 2^-11 (the float32 batches differ by ~1e-7).
        torch.testing.assert_close(sample["moments"], full[key]["moments"], rtol=2**-11, atol=1e-6)
        assert not torch.equal(sample["moments"], full[key]["moments"])


def test_training_latents_from_the_cache_equal_on_the_fly_ones_without_the_encoder(cache):
    module = LatentDiffusionModule(**tiny_module_configs())
    module.first_stage_model.load_state_dict(cache["model"].state_dict())
    module.scale_factor.fill_(0.7)
    cached = read_all(train_urls(cache), LatentDecoder())
    images = read_all(cache["images"].train, ImageDecoder(32))
    keys = sorted(cached)[:4]
    image_batch = {"image": torch.stack([images[k]["image"] for k in keys])}
    moments_batch = {"moments": torch.stack([cached[k]["moments"] for k in keys])}
    torch.manual_seed(5)
    on_the_fly = module.latents_of(image_batch, sample=True)
    mean = module.latents_of(image_batch, sample=False)

    def no_encoder(*args):
        raise AssertionError("the encoder ran on cached latents")

    module.first_stage_model.encode = no_encoder
    torch.manual_seed(5)
    from_cache = module.latents_of(moments_batch, sample=True)
    assert from_cache.shape == (4, 4, 16, 16)
    torch.testing.assert_close(from_cache, on_the_fly, atol=1e-5, rtol=0)
    torch.testing.assert_close(module.latents_of(moments_batch, sample=False), mean, atol=1e-5, rtol=0)
    assert not torch.allclose(from_cache, mean, atol=1e-3)  # a posterior sample, not the mean


def test_latent_decoder_skips_and_counts_broken_samples(tmp_path):
    good = npy_bytes(np.ones((2, 3, 3), dtype=np.float16))
    path = tmp_path / "broken.tar"
    with TarWriter(str(path), encoder=False) as sink:
        sink.write({"__key__": "ok", "moments.npy": good, "txt": b"a red circle"})
        sink.write({"__key__": "no_moments", "txt": b"x"})
        sink.write({"__key__": "bad_npy", "moments.npy": b"not an array", "txt": b"x"})
        sink.write({"__key__": "wrong_shape", "moments.npy": npy_bytes(np.ones((2, 4, 4))), "txt": b"x"})
        sink.write({"__key__": "no_caption", "moments.npy": good})
        sink.write({"__key__": "bad_text", "moments.npy": good, "txt": b"\xff\xfe"})
    stream = ShardStream(
        [str(path)], decoder=LatentDecoder(moments_shape=(2, 3, 3)), shuffle=False, shuffle_buffer=0, seed=0
    )
    decoded = list(stream)
    assert [s["key"] for s in decoded] == ["ok"]
    assert torch.equal(decoded[0]["moments"], torch.ones(2, 3, 3)) and decoded[0]["caption"] == "a red circle"
    totals = stream.counter.totals()
    assert (totals["read"], totals["missing_image"], totals["unreadable_image"]) == (1, 1, 2)
    assert (totals["missing_caption"], totals["bad_text"]) == (1, 1)


def test_fingerprint_follows_the_weights_not_the_file(cache, tmp_path):
    state = cache["model"].state_dict()
    assert checkpoint_fingerprint(cache["ckpt"]) == weights_fingerprint(state)
    changed = dict(state)
    name = next(iter(state))
    changed[name] = state[name].clone()
    changed[name].view(-1)[0] += 1e-3
    assert weights_fingerprint(changed) != weights_fingerprint(state)
    assert len(weights_fingerprint(state)) == 64


def cached_data(cache, **overrides) -> DataConfig:
    urls = cache["out"] / cache["splits"]["train"]["pattern"]
    data = DataConfig(
        name="webdataset", train_shards=str(urls), cached_latents=True, resolution=32, batch_size=4
    )
    return replace(data, num_workers=0, **overrides)


def test_datamodule_serves_moments(cache):
    datamodule = build_datamodule(cached_data(cache, val_shards=str(cache["out"] / "val-000000.tar")))
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["moments"].shape == (4, 8, 16, 16) and "image" not in batch
    assert read_cache_info(datamodule.train_urls)["splits"]["val"]["samples"] == 4


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"crop": "random"}, "set data.crop=center and data.flip=false"),
        ({"flip": True}, "set data.crop=center and data.flip=false"),
        ({"resolution": 64}, "cached at resolution 32, but data.resolution is 64"),
        ({"name": "shapes"}, "use data=webdataset"),
    ],
)
def test_data_config_errors(cache, overrides, message, tmp_path):
    if overrides.get("name") == "shapes":
        overrides = {**overrides, "root": str(tmp_path), "num_train": 4, "num_val": 4, "samples_per_shard": 4}
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        build_datamodule(cached_data(cache, **overrides))


def test_missing_cache_description(cache):
    data = cached_data(cache)
    data.train_shards = str(cache["images"].train[0])
    with pytest.raises(FileNotFoundError, match="needs shards written by python -m ldm.data.cache_latents"):
        build_datamodule(data)


def test_cache_json_is_the_manifest_of_the_shards(cache, tmp_path):
    info = json.loads((cache["out"] / "cache.json").read_text())
    assert info["shards"] == [f"train-{i:06d}.tar" for i in range(3)] + ["val-000000.tar"]
    assert info["samples"] == 16
    # A cache written before the shared shard writer has no shard list: its patterns name the shards.
    legacy = tmp_path / "legacy"
    shutil.copytree(cache["out"], legacy)
    legacy_info = {k: v for k, v in info.items() if k not in ("shards", "samples")}
    (legacy / "cache.json").write_text(json.dumps(legacy_info, indent=2) + "\n")
    urls = [str(legacy / "train-000000.tar")]
    assert read_cache_info(urls) == legacy_info
    (legacy / "val-000000.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"lists 1 shards that are not there \(val-000000.tar\)"):
        read_cache_info(urls)


def test_interrupted_recaching_leaves_no_cache(cache, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(cache["out"], out)
    loader, _ = image_batches(cache["images"].train, resolution=32, batch_size=3)

    def failing(batches):
        for i, batch in enumerate(batches):
            if i == 2:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        write_latent_shards(cache["model"], failing(loader), out, "train", samples_per_shard=5)
    with pytest.raises(FileNotFoundError, match="cache.json not found"):
        read_cache_info([str(out / "train-000000.tar")])


@pytest.mark.parametrize(
    "stage,other_autoencoder,message",
    [
        ("all", False, "trains the diffusion stage only"),
        ("autoencoder", False, "trains the diffusion stage only"),
        ("diffusion", True, "were cached with another autoencoder"),
    ],
)
def test_training_errors(cache, tmp_path, stage, other_autoencoder, message):
    ckpt = cache["ckpt"]
    if other_autoencoder:
        ckpt = tmp_path / "other.ckpt"
        save_tiny_autoencoder(ckpt, cache["config"], seed=1)
    config = TrainConfig(stage=stage, data=cached_data(cache))
    config.autoencoder.ckpt_path = str(ckpt)
    with pytest.raises(ValueError, match=message):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cached_contexts_equal_the_text_encoder_output(text_cache):
    assert text_cache["splits"]["train"]["context_shape"] == [16, 32]  # context_length x width
    cached = read_all(train_urls(text_cache), LatentDecoder(with_context=True, context_shape=(16, 32)))
    assert len(cached) == 12
    captions = [sample["caption"] for sample in cached.values()]
    with torch.no_grad():
        expected = text_cache["encoder"](captions)  # one batch of 12; the cache encoded batches of 3
    contexts = torch.stack([sample["context"] for sample in cached.values()])
    torch.testing.assert_close(contexts, expected, atol=1e-5, rtol=0)
    assert len(set(captions)) > 1 and contexts.std(dim=0).mean() > 0.01  # states differ by caption
    without = read_all(train_urls(text_cache), LatentDecoder())  # contexts are read only when asked for
    assert all("context" not in sample for sample in without.values())


def test_training_step_on_cached_text_equals_encoding_captions(text_cache):
    configs = tiny_module_configs()
    configs["conditioner"] = replace(configs["conditioner"], caption_dropout=0.5)
    module = LatentDiffusionModule(**configs)
    module.first_stage_model.load_state_dict(text_cache["model"].state_dict())
    module.cond_stage_model.load_state_dict(text_cache["encoder"].state_dict())
    cached = read_all(train_urls(text_cache), LatentDecoder(with_context=True))
    images = read_all(text_cache["images"].train, ImageDecoder(32))
    keys = sorted(cached)[:8]
    captions = [cached[k]["caption"] for k in keys]
    on_the_fly = model_inputs({"image": torch.stack([images[k]["image"] for k in keys]), "caption": captions})
    from_cache = {
        "moments": torch.stack([cached[k]["moments"] for k in keys]),
        "context": torch.stack([cached[k]["context"] for k in keys]),
        "caption": captions,
    }
    calls = []
    encode = module.cond_stage_model.forward
    module.cond_stage_model.forward = lambda c: (calls.append(list(c)), encode(c))[1]
    losses = {}
    for name, batch in (("on_the_fly", on_the_fly), ("cached", from_cache), ("cached_again", from_cache)):
        calls.clear()
        torch.manual_seed(3)  # the same posterior sample, caption draws and noise
        with pytest.warns(UserWarning, match="self.log"):  # no Trainer attached
            losses[name] = module.training_step(batch, 0).item()
        losses[name + "_calls"] = list(calls)
    assert len(losses["on_the_fly_calls"]) == 1 and len(losses["on_the_fly_calls"][0]) == 8
    assert losses["cached_calls"] == [[""]]  # the empty prompt, once
    assert losses["cached_again_calls"] == []  # ... and then kept
    assert losses["cached"] == pytest.approx(losses["on_the_fly"], abs=1e-5)
    assert losses["cached_again"] == losses["cached"]

    torch.manual_seed(2)
    keep = kept_captions(8, module.caption_dropout)
    assert 0 < int(keep.sum()) < 8  # this seed keeps some captions and drops others
    torch.manual_seed(2)
    context = module.context_of(from_cache, drop=True)
    with torch.no_grad():
        empty = module.cond_stage_model([""])[0]
    torch.testing.assert_close(context[keep], from_cache["context"][keep], atol=0, rtol=0)
    torch.testing.assert_close(context[~keep], empty.expand(int((~keep).sum()), -1, -1), atol=0, rtol=0)


def test_latent_decoder_skips_and_counts_broken_contexts(tmp_path):
    moments, context = npy_bytes(np.ones((2, 3, 3), np.float32)), npy_bytes(np.ones((4, 5), np.float16))
    path = tmp_path / "broken.tar"
    with TarWriter(str(path), encoder=False) as sink:
        sink.write({"__key__": "ok", "moments.npy": moments, "context.npy": context, "txt": b"a"})
        sink.write({"__key__": "no_context", "moments.npy": moments, "txt": b"b"})
        sink.write({"__key__": "bad_npy", "moments.npy": moments, "context.npy": b"nope", "txt": b"c"})
        wrong = npy_bytes(np.ones((4, 6), np.float32))
        sink.write({"__key__": "wrong_shape", "moments.npy": moments, "context.npy": wrong, "txt": b"d"})
    decoder = LatentDecoder(with_context=True, context_shape=(4, 5))
    stream = ShardStream([str(path)], decoder=decoder, shuffle=False, shuffle_buffer=0, seed=0)
    decoded = list(stream)
    assert [s["key"] for s in decoded] == ["ok"]
    assert decoded[0]["context"].dtype == torch.float32 and torch.equal(
        decoded[0]["context"], torch.ones(4, 5)
    )
    totals = stream.counter.totals()
    assert (totals["read"], totals["missing_caption"], totals["bad_text"]) == (1, 1, 2)
    assert sum(stream.counter.totals().values()) == 4


def test_datamodule_serves_contexts(text_cache, cache):
    val = str(text_cache["out"] / "val-000000.tar")
    datamodule = build_datamodule(cached_data(text_cache, val_shards=val, cached_text=True))
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["context"].shape == (4, 16, 32) and batch["moments"].shape == (4, 8, 16, 16)
    assert "context" not in next(iter(build_datamodule(cached_data(text_cache)).train_dataloader()))
    with pytest.raises(ValueError, match="cached without text embeddings: .* --text"):
        build_datamodule(cached_data(cache, cached_text=True))


@pytest.mark.parametrize(
    "cached_latents,trainable,message",
    [
        (False, False, "set data.cached_latents=true"),
        (True, True, "conditioner.trainable=true would train"),
    ],
)
def test_cached_text_config_errors(text_cache, tmp_path, cached_latents, trainable, message):
    config = TrainConfig(stage="diffusion", data=cached_data(text_cache, cached_text=True))
    config.data.cached_latents = cached_latents
    config.conditioner.trainable = trainable
    config.autoencoder.ckpt_path = str(text_cache["ckpt"])
    with pytest.raises(ValueError, match=message):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_text_encoder_check(text_cache):
    urls = train_urls(text_cache)
    check_cache_text_encoder(urls, text_cache["encoder"])  # the same weights: passes
    other = OpenCLIPTextEncoder(replace(tiny_module_configs()["conditioner"], init_seed=1))
    with pytest.raises(ValueError, match="cached with another text encoder"):
        check_cache_text_encoder(urls, other)


def test_resumed_fits_check_the_restored_text_encoder(text_cache):
    module = LatentDiffusionModule(**tiny_module_configs())
    check = CachedTextCheck(train_urls(text_cache))
    check.on_fit_start(None, module)  # tiny_module_configs()'s text encoder made the cache
    module.cond_stage_model.model.ln_final.weight.data.add_(1e-3)
    with pytest.raises(ValueError, match="cached with another text encoder"):
        check.on_fit_start(None, module)
