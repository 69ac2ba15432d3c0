"""ldm/benchmark/memory.py: the peak resident set is the process's own and grows with what it touches."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import json
from ldm.benchmark.memory import peak_rss_bytes

before = peak_rss_bytes()
block = bytearray(256 * 2**20)  # 256 MiB, zero-filled: every page touched
after = peak_rss_bytes()
print(json.dumps({"before": before, "after": after}))
"""


def test_peak_rss_counts_what_this_process_touches():
    # A fresh interpreter started from this (large) test process: its peak starts small and grows by
    # the 256 MiB it writes.
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 250 * 2**20 <= report["after"] - report["before"] <= 300 * 2**20
    assert 10 * 2**20 < report["before"] < 2**30  # the interpreter and torch's import, not this process's
