"""ldm/benchmark/settings.py: the bench section resolved: defaults, the data's locality, checked values."""

from __future__ import annotations

import re

import pytest
import torch

from ldm.benchmark import settings as settings_module
from ldm.benchmark.settings import data_is_local, resolve_device, resolve_settings
from ldm.config import BenchRunConfig, DataConfig
from ldm.training.config_store import compose_config


def bench_config(*overrides: str) -> BenchRunConfig:
    return compose_config(["experiment=debug", "bench.device=cpu", *overrides], root=BenchRunConfig)


def test_defaults_follow_the_training_config():
    settings = resolve_settings(bench_config())
    # debug builds on shapes: stage 2's batch size (32) and the data's resolution (32 px)
    assert settings.batch_sizes == [32] and settings.resolution == 32
    assert settings.parts == ["train", "sample", "autoencoder", "data"]  # the shapes set is generated locally
    assert (settings.precision, settings.dtype, settings.peak_size) == ("32", torch.float32, 2048)
    assert (settings.rounds, settings.warmup, settings.compare, settings.attention) == (5, 2, "none", None)
    ddim = settings.samplers["ddim"]
    assert (ddim.name, ddim.steps, ddim.guidance_scale, ddim.eta) == ("ddim", 10, 5.0, 0.0)


def test_overrides_and_sampler_presets():
    settings = resolve_settings(
        bench_config(
            "bench.precision=bf16",
            "bench.batch_sizes=[1,4]",
            "bench.resolution=64",
            "bench.samplers=[heun,dpmpp_2m]",
            "bench.sample_steps=3",
            "bench.guidance_scale=7.5",
            "bench.parts=[sample]",
        )
    )
    assert settings.dtype == torch.bfloat16 and settings.batch_sizes == [1, 4] and settings.resolution == 64
    assert list(settings.samplers) == ["heun", "dpmpp_2m"] and settings.parts == ["sample"]
    heun = settings.samplers["heun"]
    assert (heun.name, heun.steps, heun.guidance_scale) == ("heun", 3, 7.5)
    assert settings.as_dict()["samplers"]["dpmpp_2m"]["name"] == "dpmpp_2m"
    assert settings.as_dict()["device"] == "cpu"
    with settings.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with resolve_settings(bench_config()).autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_webdataset_is_local_only_when_every_shard_is_a_file(tmp_path):
    (tmp_path / "000000.tar").write_bytes(b"")
    (tmp_path / "000001.tar").write_bytes(b"")
    local = DataConfig(name="webdataset", train_shards=str(tmp_path / "{000000..000001}.tar"))
    assert data_is_local(local) and data_is_local(DataConfig(name="shapes"))
    missing = DataConfig(name="webdataset", train_shards=str(tmp_path / "{000000..000002}.tar"))
    remote = DataConfig(name="webdataset", train_shards="pipe:curl -s https://example.com/{0..1}.tar")
    assert not data_is_local(missing) and not data_is_local(remote)
    config = bench_config("data=webdataset", f"data.train_shards='{remote.train_shards}'")
    assert resolve_settings(config).parts == ["train", "sample", "autoencoder"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("bench.precision=fp8", "bench.precision must be one of 32, bf16, fp16, got 'fp8'"),
        ("bench.compare=onnx", "bench.compare must be one of none, diffusers, got 'onnx'"),
        ("bench.attention=flash", "bench.attention must be one of sdpa, xformers, math, got 'flash'"),
        (
            "bench.parts=[train,eval]",
            "bench.parts must be one of train, sample, autoencoder, data, got 'eval'",
        ),
        ("bench.batch_sizes=[2,0]", "bench.batch_sizes must all be at least 1, got [2, 0]"),
        ("bench.sample_steps=0", "bench.sample_steps must be at least 1, got 0"),
        ("bench.samplers=[nope]", "unknown sampler 'nope'"),
        ("bench.device=tpu", "bench.device must be one of auto, cpu, cuda, got 'tpu'"),
        ("bench.rounds=0", "bench.rounds must be at least 1 and bench.warmup at least 0, got 0 and 2"),
    ],
)
def test_bad_values_are_refused_in_one_line(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_settings(bench_config(override))


def test_cuda_graphs_need_cuda_and_sampling_alone(monkeypatch):
    with pytest.raises(ValueError, match="bench.cuda_graphs needs a CUDA device, got bench.device=cpu"):
        resolve_settings(bench_config("bench.cuda_graphs=true", "bench.device=cpu", "bench.parts=[sample]"))
    monkeypatch.setattr(settings_module, "resolve_device", lambda name: torch.device("cuda"))
    ok = resolve_settings(bench_config("bench.cuda_graphs=true", "bench.parts=[sample]"))
    assert ok.cuda_graphs and ok.device.type == "cuda"
    for others in (["bench.parts=[sample,train]"], ["bench.parts=[sample]", "bench.compare=diffusers"]):
        with pytest.raises(ValueError, match=re.escape("set bench.parts=[sample] bench.compare=none")):
            resolve_settings(bench_config("bench.cuda_graphs=true", *others))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_device_is_refused():
    with pytest.raises(ValueError, match="bench.device=cuda but torch sees no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
