"""ldm/benchmark/report.py: the commit of a checkout (none elsewhere), versions, the JSON and the table."""

from __future__ import annotations

import json
import re
import subprocess

import torch

from ldm.benchmark.report import (
    Measurement,
    Quantity,
    format_table,
    git_commit,
    metadata,
    report_dict,
    write_json,
)
from tests.conftest import ROOT


def test_git_commit_is_the_checkouts_head_or_none(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:  # the tests run from a checkout
        assert git_commit(ROOT) == head.stdout.strip()
    assert git_commit(tmp_path) is None  # not a checkout
    assert git_commit(ROOT / "ldm") is None  # inside a checkout, but not its top level: not ours


def test_metadata_names_the_machine_and_versions():
    meta = metadata(torch.device("cpu"))
    assert meta["device"]["type"] == "cpu" and meta["device"]["name"]
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert meta["versions"]["torch"] == torch.__version__ and meta["versions"]["ldm"] == version
    assert set(meta) == {"date", "device", "cpus", "threads", "versions", "git_commit"}


def test_json_round_trip_and_table(tmp_path):
    measurements = [
        Measurement("train", "unet step", 2, {"samples_per_s": Quantity(12.3456, "samples/s")}),
        Measurement("peak", "matmul 8x8 float32", None, {"flops": Quantity(1024, "FLOP")}, "a note"),
    ]
    report = report_dict({"date": "today"}, {"seed": 0}, {"device": "cpu"}, measurements)
    path = write_json(report, tmp_path / "out" / "bench.json")
    loaded = json.loads(path.read_text())
    assert loaded["measurements"][0] == {
        "part": "train",
        "case": "unet step",
        "batch_size": 2,
        "metrics": {"samples_per_s": {"value": 12.3456, "unit": "samples/s"}},
        "notes": "",
    }
    assert (loaded["date"], loaded["config"], loaded["settings"]) == ("today", {"seed": 0}, {"device": "cpu"})
    assert format_table(loaded["measurements"]).splitlines() == [
        "part  | case               | batch | numbers",
        "------+--------------------+-------+--------",
        "train | unet step          | 2     | samples_per_s 12.35 samples/s",
        "peak  | matmul 8x8 float32 |       | flops 1024 FLOP",
    ]
