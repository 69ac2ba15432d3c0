"""Fixtures for the benchmarks' tests: benchmarks/ is not a package, so each one is loaded from its file
(the clock whose readings are known, ``squares_clock``, is in tests/conftest.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def load_benchmark():
    """load_benchmark("bench_data") -> the module of benchmarks/bench_data.py."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
