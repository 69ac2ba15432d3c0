"""The ``bench`` section resolved for this machine (device, dtype, batch sizes, parts, samplers), checked."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ldm.config import BENCH_PARTS, BenchRunConfig, DataConfig, SamplerConfig
from ldm.data.shards import SYNTHETIC_SETS
from ldm.data.urls import expand_urls
from ldm.denoiser.attention import ATTENTION_BACKENDS
from ldm.samplers.presets import sampler_preset

PRECISIONS = {"32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""bench.precision -> the dtype of autocast and of the peak matmul."""
DEVICES = ("auto", "cpu", "cuda")
COMPARISONS = ("none", "diffusers")
PEAK_SIZES = {"cuda": 8192, "cpu": 2048}
"""Default side of the peak matmul: large enough to reach the device's rate, small enough to be quick."""


@dataclass
class BenchSettings:
    """What a run measures and how, resolved from ``bench`` and the rest of the config."""

    device: torch.device
    precision: str
    resolution: int
    batch_sizes: list[int]
    parts: list[str]
    samplers: dict[str, SamplerConfig]
    peak_size: int
    rounds: int
    warmup: int
    compile: bool
    channels_last: bool
    attention: Optional[str]
    compare: str
    compare_optimizer: bool = True
    cuda_graphs: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    def autocast(self) -> AbstractContextManager:
        """Autocast in the bench's dtype on its device (nothing for float32)."""
        if self.precision == "32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def as_dict(self) -> dict[str, Any]:
        """Plain values for the JSON report."""
        values = dataclasses.asdict(self)
        values["device"] = str(self.device)
        values["samplers"] = {name: dataclasses.asdict(s) for name, s in self.samplers.items()}
        return values


def resolve_device(name: str) -> torch.device:
    """cpu, cuda, or auto: cuda when available."""
    if name not in DEVICES:
        raise ValueError(f"bench.device must be one of {', '.join(DEVICES)}, got '{name}'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("bench.device=cuda but torch sees no CUDA device")
    return torch.device(name)


def data_is_local(data: DataConfig) -> bool:
    """Whether the training data is on this machine: a built-in set (generated here), or webdataset
    shards that are all files."""
    if data.name in SYNTHETIC_SETS:
        return True
    if data.name != "webdataset" or not data.train_shards:
        return False
    return all(Path(url).is_file() for url in expand_urls(data.train_shards))


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"bench.{key} must be one of {', '.join(choices)}, got '{value}'")


def _samplers(config: BenchRunConfig) -> dict[str, SamplerConfig]:
    bench = config.bench
    if bench.sample_steps < 1:
        raise ValueError(f"bench.sample_steps must be at least 1, got {bench.sample_steps}")
    return {
        name: sampler_preset(
            config.sampler, name, steps=bench.sample_steps, guidance_scale=bench.guidance_scale
        )
        for name in bench.samplers
    }


def resolve_settings(config: BenchRunConfig) -> BenchSettings:
    """The run's settings; raises a one-line ValueError for a value that cannot be measured."""
    bench = config.bench
    _check_choice("precision", bench.precision, tuple(PRECISIONS))
    _check_choice("compare", bench.compare, COMPARISONS)
    if bench.attention is not None:
        _check_choice("attention", bench.attention, ATTENTION_BACKENDS)
    parts = bench.parts
    if parts is None:
        parts = [p for p in BENCH_PARTS if p != "data" or data_is_local(config.data)]
    for part in parts:
        _check_choice("parts", part, BENCH_PARTS)
    if bench.rounds < 1 or bench.warmup < 0:
        raise ValueError(
            "bench.rounds must be at least 1 and bench.warmup at least 0, "
            f"got {bench.rounds} and {bench.warmup}"
        )
    batch_sizes = bench.batch_sizes or [config.diffusion.batch_size or config.data.batch_size]
    if min(batch_sizes) < 1:
        raise ValueError(f"bench.batch_sizes must all be at least 1, got {batch_sizes}")
    resolution = bench.resolution or config.data.resolution
    if resolution < 1:
        raise ValueError(f"bench.resolution must be at least 1 pixel, got {resolution}")
    device = resolve_device(bench.device)
    if bench.cuda_graphs:
        if device.type != "cuda":
            raise ValueError(f"bench.cuda_graphs needs a CUDA device, got bench.device={device.type}")
        if list(parts) != ["sample"] or bench.compare != "none":
            raise ValueError(
                "bench.cuda_graphs times our sampling only: set bench.parts=[sample] bench.compare=none"
            )
    return BenchSettings(
        device=device,
        precision=bench.precision,
        resolution=resolution,
        batch_sizes=list(batch_sizes),
        parts=list(parts),
        samplers=_samplers(config) if "sample" in parts or bench.compare != "none" else {},
        peak_size=bench.peak_size or PEAK_SIZES[device.type],
        rounds=bench.rounds,
        warmup=bench.warmup,
        compile=bench.compile,
        channels_last=bench.channels_last,
        attention=bench.attention,
        compare=bench.compare,
        compare_optimizer=bench.compare_optimizer,
        cuda_graphs=bench.cuda_graphs,
    )


@contextlib.contextmanager
def inference(settings: BenchSettings) -> Iterator[None]:
    """No gradients, autocast as the settings say."""
    with torch.no_grad(), settings.autocast():
        yield
