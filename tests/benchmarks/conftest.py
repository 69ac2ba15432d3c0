"""Fixtures for the benchmarks' tests: benchmarks/ is not a package, so each one is loaded from its file;
and a clock whose readings are known, so that the timings a benchmark reports can be checked exactly."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any

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


class SquaresClock:
    """The ``time`` module, except that ``perf_counter`` reads 0, 1, 4, 9, ...: call n reads n^2.

    A benchmark that reads the clock before and after each timed run (calls 2k and 2k + 1) reports
    (2k + 1)^2 - (2k)^2 = 4k + 1 seconds for its k-th run: 1, 5, 9, 13, ...
    """

    def __init__(self) -> None:
        self.calls = 0

    def perf_counter(self) -> float:
        reading = float(self.calls**2)
        self.calls += 1
        return reading

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def squares_clock(monkeypatch):
    """squares_clock(module) -> a SquaresClock that `module` now reads as its ``time``."""

    def install(module: ModuleType) -> SquaresClock:
        clock = SquaresClock()
        monkeypatch.setattr(module, "time", clock)
        return clock

    return install
