"""ldm/conf: each YAML file states only what differs from what it builds on (one source per fact)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from ldm.config import CONF_DIR
from ldm.training.config_store import GROUP_SCHEMAS, compose_config


def leaves(tree: dict, prefix: str = ""):
    """(dotted key, value) of every leaf of a nested dict, `defaults` lists left out."""
    for key, value in tree.items():
        if key == "defaults":
            continue
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


GROUP_FILES = [(g, p) for g in GROUP_SCHEMAS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,path", GROUP_FILES, ids=[f"{g}/{p.stem}" for g, p in GROUP_FILES])
def test_group_files_state_only_what_differs_from_the_dataclass(group: str, path: Path):
    data = yaml.safe_load(path.read_text()) or {}
    base = dataclasses.asdict(GROUP_SCHEMAS[group]())
    for parent in data.get("defaults", []):  # kl_f4 builds on kl: compare with what it inherits
        if isinstance(parent, str) and parent != "_self_":
            base.update(yaml.safe_load((CONF_DIR / group / f"{parent}.yaml").read_text()) or {})
    restated = [key for key, value in leaves(data) if lookup(base, key) == value]
    assert not restated, f"{path.name} restates the defaults of {', '.join(restated)}"


@pytest.mark.parametrize("experiment", ["shapes", "sd2_base"])
def test_experiments_state_only_what_differs_from_the_groups(experiment: str):
    data = yaml.safe_load((CONF_DIR / "experiment" / f"{experiment}.yaml").read_text())
    base = dataclasses.asdict(compose_config(["~experiment"]))
    restated = [key for key, value in leaves(data) if lookup(base, key) == value]
    assert not restated, f"experiment/{experiment}.yaml restates {', '.join(restated)}"


@pytest.mark.parametrize("experiment", ["shapes_sr", "shapes_inpaint"])
def test_experiments_built_on_shapes_state_only_what_differs_from_it(experiment: str):
    data = yaml.safe_load((CONF_DIR / "experiment" / f"{experiment}.yaml").read_text())
    assert data["defaults"] == ["shapes", "_self_"]
    base = dataclasses.asdict(compose_config(["experiment=shapes"]))
    restated = [key for key, value in leaves(data) if lookup(base, key) == value]
    assert not restated, f"experiment/{experiment}.yaml restates {', '.join(restated)}"


def test_a_restated_default_is_caught():
    data = {"denoiser": {"model_channels": 320, "use_checkpoint": True}}
    base = dataclasses.asdict(compose_config(["~experiment"]))
    assert [k for k, v in leaves(data) if lookup(base, k) == v] == ["denoiser.model_channels"]


def test_the_compose_gpu_preset_states_only_what_differs_from_compose():
    data = yaml.safe_load((CONF_DIR / "experiment" / "compose_gpu.yaml").read_text())
    assert data["defaults"] == ["compose"]
    base = dataclasses.asdict(compose_config(["experiment=compose"]))
    restated = [key for key, value in leaves(data) if lookup(base, key) == value]
    assert not restated, f"experiment/compose_gpu.yaml restates {', '.join(restated)}"
    gpu = compose_config(["experiment=compose_gpu"])
    assert gpu.diffusion.batch_size == 8 * base["diffusion"]["batch_size"]
    assert gpu.denoiser == compose_config(["experiment=compose"]).denoiser  # the same networks
