"""The built wheel trains on its own: configs ship as package data, nothing is read from the checkout."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

from ldm.weights.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command without PYTHONPATH (which could point at the checkout); fail with its stderr."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONUNBUFFERED="1", WANDB_MODE="disabled", PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def build_wheel(out: Path, work: Path) -> Path:
    """A wheel of the project, built offline from a copy of the sources (the build leaves build/ behind)."""
    source = work / "source"
    shutil.copytree(ROOT / "ldm", source / "ldm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    args = ["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out)]
    run([sys.executable, *args, str(source)], cwd=work)
    (wheel,) = out.glob("ldm-*.whl")
    return wheel


def site_packages(python: Path) -> Path:
    """The site-packages directory of the environment of `python`."""
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = run([str(python), "-c", code], cwd=python.parent)
    return Path(purelib.stdout.strip()).resolve()


def environment_with_the_dependencies(path: Path) -> Path:
    """A fresh virtual environment that sees this one's packages but not its editable ldm; its python.

    Plain directory lines of a .pth file are appended to sys.path, but the .pth files inside those
    directories are not run, so this environment's editable-install finder for ldm never loads.
    """
    venv.create(path, with_pip=False)
    python = path / ("Scripts" if os.name == "nt" else "bin") / "python"
    (site_packages(python) / "parent_environment.pth").write_text("\n".join(site.getsitepackages()))
    return python


def test_wheel_installs_and_trains_the_debug_preset_outside_the_checkout(tmp_path):
    wheel = build_wheel(tmp_path / "wheels", tmp_path)
    # Every module and every config of the checkout, ldm/training/ (no __init__.py) included.
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith((".py", ".yaml"))}
    files = (ROOT / "ldm").rglob("*")
    assert shipped == {p.relative_to(ROOT).as_posix() for p in files if p.suffix in (".py", ".yaml")}
    python = environment_with_the_dependencies(tmp_path / "venv")
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    show = "import ldm, ldm.config; print(ldm.__file__); print(ldm.config.CONF_DIR)"
    where = run([str(python), "-c", show], cwd=tmp_path)
    module, conf = (Path(line).resolve() for line in where.stdout.split())
    assert module == site_packages(python) / "ldm" / "__init__.py"  # the wheel's ldm, not the checkout's
    assert conf == site_packages(python) / "ldm" / "conf"

    run_dir = tmp_path / "run"
    args = ["experiment=debug", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    run([str(python), "-m", "ldm.train", *args], cwd=tmp_path)
    # The shapes set is written under the working directory (data.root is relative), not the checkout.
    # 128 training and 32 validation images at 64 per shard: 2 + 1 shards.
    assert len(list((tmp_path / "data" / "shapes").rglob("*.tar"))) == 3
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", expected_stage="diffusion")
    assert ckpt["global_step"] == 4  # the debug preset's diffusion.max_steps
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["diffusion"]["max_steps"] == 4 and config["data"]["num_train"] == 128
