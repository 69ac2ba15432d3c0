"""The two layers: the core (``ldm/`` outside ``ldm/training/``) imports neither Lightning nor Hydra.

Each check runs in a fresh interpreter, so that what other tests imported does not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINING_LAYER = ("pytorch_lightning", "lightning", "lightning_fabric", "hydra")
"""Top-level packages that only ``ldm.training`` may import (lightning_fabric: pytorch_lightning's base)."""
SHIMS = ("ldm.train", "ldm.bench")
"""``python -m`` shims over training-layer entry points (``ldm.training.train``, ``ldm.training.bench``)."""

IMPORT_CORE = """
import importlib, json, pkgutil, sys
import ldm

SHIMS = ("ldm.train", "ldm.bench")

def training_layer(name):
    # ldm.train and ldm.bench are the `python -m` shims over ldm.training.train and ldm.training.bench
    return name in SHIMS or name == "ldm.training" or name.startswith("ldm.training.")

modules = [m.name for m in pkgutil.walk_packages(ldm.__path__, "ldm.") if not training_layer(m.name)]
for name in modules:
    importlib.import_module(name)
print(json.dumps({"modules": modules, "loaded": sorted(sys.modules)}))
"""

IMPORT_TRAINING = """
import json, sys
import ldm.training.train
print(json.dumps({"loaded": sorted(sys.modules)}))
"""


def run_python(code: str) -> dict:
    """Run `code` in a fresh interpreter from the checkout; its last stdout line, parsed as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def training_layer_packages(loaded: list[str]) -> set[str]:
    """The Lightning and Hydra packages among the loaded module names."""
    return {name.split(".")[0] for name in loaded} & set(TRAINING_LAYER)


def core_module_names() -> set[str]:
    """Every module file of the core, named as Python imports it."""
    names = set()
    for path in (ROOT / "ldm").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if name != "ldm" and name not in SHIMS and not name.startswith("ldm.training."):
            names.add(name)
    return names


def test_core_imports_neither_lightning_nor_hydra():
    report = run_python(IMPORT_CORE)
    # The walk reaches every module file of the core: a folder without __init__.py would hide its
    # modules from pkgutil, and so from this test. ldm.eval.__main__ is import-safe: it runs under
    # `if __name__ == "__main__"` only.
    assert set(report["modules"]) == core_module_names()
    assert {"ldm.pipeline", "ldm.eval.__main__", "ldm.samplers.dpmpp", "ldm.config"} <= set(report["modules"])
    assert {"ldm.benchmark.run", "ldm.benchmark.diffusers_compare"} <= set(report["modules"])
    assert training_layer_packages(report["loaded"]) == set()


def test_training_entry_point_imports_lightning_and_hydra():
    # The reverse: the same check finds them where they belong, so the test above is not vacuous.
    report = run_python(IMPORT_TRAINING)
    assert training_layer_packages(report["loaded"]) == set(TRAINING_LAYER) - {"lightning"}
