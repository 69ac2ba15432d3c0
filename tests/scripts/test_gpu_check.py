"""scripts/gpu_check.sh (and scripts/gpu_check_report.py, which writes its summary), through its dry run:
the same steps on the CPU at tiny sizes, so that what a GPU machine runs in its one call is tested here."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
FILES = {"summary.json", "summary.md", "env.txt", "steps.log", "tests.xml", "bench.json", "compose.json"}
"""All that the check may write: a GPU machine's tool returns at most 8 files from its output folder."""


def run_check(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`bash scripts/gpu_check.sh ARGS` with this interpreter, one thread, and `env` on top."""
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("OUT", "GPU_CHECK_BUDGET_S", "GPU_CHECK_PYTEST_ARGS")
    }
    environment = {**inherited, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=1200
    )


def listed_steps() -> list[str]:
    """The step names that --list prints, in order."""
    result = run_check("--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["step", "timeout_s", "min_s", "expected_s"]
    return [line.split()[0] for line in lines[1:]]


def is_bench(name: str) -> bool:
    return name.startswith(("bench_", "compare_"))


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def bench_importable() -> bool:
    try:
        importlib.import_module("ldm.bench")
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The full dry run, once for this module: (its process, its output folder)."""
    out = tmp_path_factory.mktemp("gpu_check")
    return run_check("--dry-run", str(out)), out


def test_steps_come_in_order_of_value_each_once():
    names = listed_steps()
    assert names[:8] == [
        "env",
        "install",
        "gpu_tests",
        "bench_256_train",  # the MFU target
        "bench_512_sample_compile",  # the it/s target
        "bench_512_sample_cudagraphs",  # the same, each step replayed as a CUDA graph
        "compare_diffusers_512_sample",
        "compare_diffusers_256_train",
    ]
    assert len(set(names)) == len(names) == 17
    assert names[-1] == "compose_gpu"  # minutes of training: last, or alone with --only


@pytest.mark.slow
def test_dry_run_records_every_step_and_the_environment(dry_run):
    result, out = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {p.name for p in out.iterdir()} <= FILES
    summary = summary_of(out)
    assert summary["mode"] == "dry-run" and summary["budget_s"] == 1200
    steps = summary["steps"]
    assert [s["name"] for s in steps] == listed_steps()
    for s in steps:  # every step with its exit code, or skipped with the reason
        if s["status"] == "skipped":
            assert s["exit_code"] is None and s["reason"], s
        else:
            assert isinstance(s["exit_code"], int) and s["seconds"] <= s["timeout_s"], s
    for s in steps:
        if not is_bench(s["name"]):
            assert (s["status"], s["exit_code"]) == ("ok", 0), s
    markdown = (out / "summary.md").read_text()
    assert all(f"| {s['name']} | {s['status']} |" in markdown for s in steps)

    env = (out / "env.txt").read_text()
    for section in ("## date", "## commit", "## host", "## nvidia-smi", "## versions", "## pip freeze"):
        assert section in env
    assert f"torch {torch.__version__} | cuda {torch.version.cuda}" in env
    assert f"cuda available: {torch.cuda.is_available()}" in env
    assert "\npytest==" in env  # pip freeze of the interpreter the steps ran

    log = (out / "steps.log").read_text()
    assert all(f"===== {s['name']}: {s['status']}, exit code {s['exit_code']}," in log for s in steps[:3])
    suite = ElementTree.parse(out / "tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert int(suite.get("tests")) >= 20 and int(suite.get("failures")) == int(suite.get("errors")) == 0
    if not torch.cuda.is_available():  # without CUDA every GPU test skips, none fails
        assert int(suite.get("skipped")) == int(suite.get("tests"))
    names = {case.get("name") for case in suite.iter("testcase")}
    assert "test_fsdp_on_cuda_trains_as_one_process" in names
    assert "test_debug_preset_trains_both_stages_in_bf16_on_cuda" in names
    # the compose GPU preset's step (tiny on the CPU): both stages trained, the whole suite scored
    compose = json.loads((out / "compose.json").read_text())
    assert compose["suite"] == "compose" and len(compose["tasks"]) == 7 and compose["n"] == 48


@pytest.mark.slow
def test_dry_run_benchmarks(dry_run):
    _, out = dry_run
    bench_steps = [s for s in summary_of(out)["steps"] if is_bench(s["name"])]
    if not bench_importable():
        for s in bench_steps:  # recorded as skipped, with the reason
            assert s["status"] == "skipped" and "ldm.bench is not importable" in s["reason"], s
        pytest.skip("ldm.bench is not importable on this branch: its steps were skipped (checked above)")
    xformers = importlib.util.find_spec("xformers") is not None
    bench = json.loads((out / "bench.json").read_text())
    for s in bench_steps:
        if "xformers" in s["name"] and not xformers:
            assert s["status"] == "skipped" and "xformers" in s["reason"], s
        else:
            assert (s["status"], s["exit_code"]) == ("ok", 0), s
            assert isinstance(bench[s["name"]], dict) and "error" not in bench[s["name"]], s["name"]


def test_out_of_budget_every_step_is_skipped_and_listed(tmp_path):
    result = run_check("--dry-run", "--budget", "0", str(tmp_path))
    assert result.returncode == 0, result.stderr
    steps = summary_of(tmp_path)["steps"]
    assert [s["name"] for s in steps] == listed_steps()
    assert all(s["status"] == "skipped" and re.match(r"budget: -\d+s of 0s left", s["reason"]) for s in steps)
    assert not (tmp_path / "env.txt").exists()


def test_a_failing_step_does_not_stop_the_next(tmp_path):
    # An interpreter that fails at once: every selected step fails, each with its own exit code, and the
    # summary is still written (by python3).
    result = run_check("--dry-run", "--only", "env,install,gpu_tests", str(tmp_path), PYTHON="/bin/false")
    assert result.returncode == 1
    steps = {s["name"]: s for s in summary_of(tmp_path)["steps"]}
    assert list(steps) == listed_steps()
    for name in ("env", "install", "gpu_tests"):
        assert steps[name]["status"] == "failed" and steps[name]["exit_code"] == 1, steps[name]
    others = [s for name, s in steps.items() if name not in ("env", "install", "gpu_tests")]
    assert all(s["status"] == "skipped" and s["reason"] == "not selected by --only" for s in others)


def test_bad_options_are_refused_in_one_line():
    for args, message in (
        (["--budget", "soon"], "whole number of seconds"),
        (["--fast"], "unknown option --fast"),
    ):
        result = run_check(*args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
