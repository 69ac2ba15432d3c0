"""Fixtures for ldm/benchmark's tests: the debug preset's networks and settings, CPU, 32 px."""

from __future__ import annotations

import pytest

from ldm.benchmark.networks import BenchNetworks, build_networks, prepare_networks
from ldm.benchmark.settings import BenchSettings, resolve_settings
from ldm.config import BenchRunConfig
from ldm.training.config_store import compose_config

DEBUG = ["experiment=debug", "bench.device=cpu", "bench.resolution=32", "bench.rounds=3", "bench.warmup=0"]


def debug_bench(*overrides: str) -> tuple[BenchRunConfig, BenchSettings, BenchNetworks]:
    """The debug preset's bench config, its settings and its networks (random weights, prepared)."""
    config = compose_config([*DEBUG, *overrides], root=BenchRunConfig)
    settings = resolve_settings(config)
    networks = build_networks(config, settings.resolution, seed=config.seed)
    prepare_networks(networks, settings)
    return config, settings, networks


@pytest.fixture
def debug():
    """(config, settings, networks) of the debug preset at 32 px (16 x 16 x 4 latents)."""
    return debug_bench()
