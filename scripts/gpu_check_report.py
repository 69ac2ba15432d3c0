"""The summary of scripts/gpu_check.sh, rewritten after each step: summary.json, summary.md and bench.json.

    python scripts/gpu_check_report.py --records STEPS.tsv --bench-dir DIR --out OUT --mode gpu \
        --budget 480 --elapsed 123 --python python3 --commit abc123

STEPS.tsv has one line per step: name, status, exit code, seconds, timeout, expected seconds, reason,
command (tab-separated; "-" where there is no value). DIR holds one JSON per ``ldm.bench`` step, named
for the step. Standard library only: it must run where the project's dependencies do not.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any, Optional

FIELDS = ("name", "status", "exit_code", "seconds", "timeout_s", "expected_s", "reason", "command")
"""The columns of the records file, in order."""


STATUSES = ("ok", "failed", "timeout", "skipped")
"""What a step can end as."""


def _number(text: str) -> Optional[int]:
    return None if text == "-" else int(text)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The steps recorded so far, in the order they were run or skipped."""
    steps = []
    for line in path.read_text().splitlines():
        values = line.split("\t")
        if len(values) != len(FIELDS):
            raise ValueError(
                f"{path}: expected {len(FIELDS)} tab-separated fields, got {len(values)}: {line!r}"
            )
        step = dict(zip(FIELDS, values))
        for key in ("exit_code", "seconds", "timeout_s", "expected_s"):
            step[key] = _number(step[key])
        steps.append(step)
    return steps


def read_bench(folder: Path) -> dict[str, Any]:
    """Each bench step's JSON by step name; a file that does not parse is reported as such."""
    results: dict[str, Any] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            results[path.stem] = {"error": f"unreadable JSON: {error}"}
    return results


def markdown(summary: dict[str, Any]) -> str:
    """summary.md: a header and one table row per step."""
    lines = [
        f"# GPU check ({summary['mode']})",
        "",
        f"{summary['written']}, commit {summary['commit']}, python `{summary['python']}`: "
        f"{summary['elapsed_s']} s of a {summary['budget_s']} s budget.",
        "",
        "| step | status | exit code | seconds | timeout (s) | expected on an H200 (s) | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary["steps"]:
        cells = [
            s["name"],
            s["status"],
            s["exit_code"],
            s["seconds"],
            s["timeout_s"],
            s["expected_s"],
            s["reason"],
        ]
        lines.append("| " + " | ".join("" if c is None else str(c).replace("|", "/") for c in cells) + " |")
    counts = {status: sum(s["status"] == status for s in summary["steps"]) for status in STATUSES}
    lines += ["", ", ".join(f"{n} {status}" for status, n in counts.items()) + "."]
    return "\n".join(lines) + "\n"


def write_summary(args: argparse.Namespace) -> dict[str, Any]:
    """Write summary.json, summary.md and (when any bench step wrote JSON) bench.json into args.out."""
    steps = read_records(args.records)
    summary = {
        "mode": args.mode,
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": args.commit,
        "python": args.python,
        "budget_s": args.budget,
        "elapsed_s": args.elapsed,
        "steps": steps,
    }
    out = Path(args.out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    bench = read_bench(args.bench_dir)
    if bench:
        (out / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    files = sorted({p.name for p in out.iterdir() if p.is_file()} | {"summary.md"})
    (out / "summary.md").write_text(markdown(summary) + f"\nFiles: {', '.join(files)}.\n")
    return summary


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=Path, required=True, help="the steps file (tab-separated)")
    p.add_argument("--bench-dir", type=Path, required=True, help="folder of the bench steps' JSON files")
    p.add_argument("--out", type=Path, required=True, help="the check's output folder")
    p.add_argument("--mode", required=True, help="gpu or dry-run")
    p.add_argument("--budget", type=int, required=True, help="the time budget in seconds")
    p.add_argument("--elapsed", type=int, required=True, help="seconds since the check started")
    p.add_argument("--python", required=True, help="the interpreter the steps ran")
    p.add_argument("--commit", required=True, help="the checkout's commit")
    return p.parse_args(argv)


if __name__ == "__main__":
    write_summary(parse_args())
