"""Runs that survive: a killed run resumed from its step-N checkpoint continues exactly as the
uninterrupted run (losses and final weights bit-identical, with 2 DataLoader workers), and a
SIGTERM stops a run with a checkpoint at the next step boundary that ``resume=auto`` finishes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ldm.training.preemption import PREEMPTED_EXIT_CODE
from ldm.weights.checkpoint import read_checkpoint
from tests.conftest import ROOT, train_on_debug_data

pytestmark = pytest.mark.slow

N = 10
"""The interrupted runs stop after the step-N checkpoint; the whole runs have 2N steps, which crosses
an epoch of the debug set (128 images, batch 8: 16 batches) and, for stage 1, the discriminator's start."""


def stage_args(debug_run: Path, stage: str) -> list[str]:
    common = [
        "data.num_workers=2",
        f"trainer.checkpoint_every_n_steps={N}",
        "trainer.keep_last=10",
        "trainer.log_every_n_steps=1",
        "trainer.throughput_window=0",
    ]
    if stage == "autoencoder":
        # The discriminator starts at step N - 3: active before and after the interruption.
        return [
            "stage=autoencoder",
            f"autoencoder.max_steps={2 * N}",
            f"autoencoder.disc_start={N - 3}",
            *common,
        ]
    ae = debug_run / "autoencoder" / "checkpoints" / "last.ckpt"
    return [
        "stage=diffusion",
        f"autoencoder.ckpt_path={ae}",
        f"diffusion.max_steps={2 * N}",
        "diffusion.ema=true",
        *common,
    ]


def start(debug_run: Path, run_dir: Path, *args: str) -> subprocess.Popen:
    """`python -m ldm.train experiment=debug ARGS` in the background (as train_on_debug_data)."""
    command = [
        sys.executable, "-m", "ldm.train", "experiment=debug", f"hydra.run.dir={run_dir}",
        f"data.root={debug_run.parent / 'data'}", "trainer.enable_progress_bar=false", *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None and not path.exists():
            raise AssertionError(f"the run ended without writing {path}:\n{process.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.005)


def losses(run_dir: Path, stage: str) -> dict[int, dict[str, str]]:
    """step -> the logged training values of that step, as the CSV logger wrote them (exact reprs)."""
    rows = csv.DictReader(open(run_dir / "logs" / stage / "metrics.csv"))
    out: dict[int, dict[str, str]] = {}
    for row in rows:
        values = {k: v for k, v in row.items() if k.startswith("train/") and v and "device" not in k}
        if values:
            out.setdefault(int(row["step"]), {}).update(values)
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_killed_run_resumes_bit_identically(debug_run, tmp_path, stage):
    args = stage_args(debug_run, stage)
    folder = "autoencoder/checkpoints" if stage == "autoencoder" else "checkpoints"
    whole = train_on_debug_data(debug_run, tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = start(debug_run, tmp_path / "killed", *args)
    step_n = tmp_path / "killed" / folder / f"step-{N:08d}.ckpt"
    wait_for(step_n, killed)
    killed.send_signal(signal.SIGKILL)  # no chance to write anything else
    killed.wait()
    assert read_checkpoint(step_n)["global_step"] == N

    resumed = train_on_debug_data(debug_run, tmp_path / "resumed", *args, f"resume={step_n}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = losses(tmp_path / "whole", stage), losses(tmp_path / "resumed", stage)
    assert len(expected) == 2 * N and len(got) == N
    assert got == {step: expected[step] for step in sorted(expected)[N:]}  # bit-identical values
    if stage == "autoencoder":  # the discriminator trained on both sides of the interruption
        assert all("train/d_loss" in got[step] for step in got)
    final = folder + "/last.ckpt"
    a, b = weights(tmp_path / "whole" / final), weights(tmp_path / "resumed" / final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Not trivially equal: training moved the weights after the interruption.
    middle = weights(step_n)
    assert any(not torch.equal(middle[k], a[k]) for k in a)


def test_sigterm_writes_a_checkpoint_at_the_next_step_and_resume_auto_finishes(debug_run, tmp_path):
    args = stage_args(debug_run, "diffusion")
    whole = train_on_debug_data(debug_run, tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr[-3000:]

    run_dir = tmp_path / "preempted"
    process = start(debug_run, run_dir, *args)
    wait_for(run_dir / "checkpoints" / f"step-{N:08d}.ckpt", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    steps = sorted(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.ckpt"))
    stopped_at = steps[-1]
    assert steps[0] == N and N < stopped_at < 2 * N  # newer than the last periodic checkpoint
    assert f"stopped by SIGTERM at step {stopped_at}" in output
    assert os.path.samefile(
        run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / f"step-{stopped_at:08d}.ckpt"
    )

    finished = train_on_debug_data(debug_run, run_dir, *args, "resume=auto")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"continuing from {run_dir / 'checkpoints'}" in finished.stdout + finished.stderr
    a, b = (
        weights(tmp_path / "whole" / "checkpoints" / "last.ckpt"),
        weights(run_dir / "checkpoints" / "last.ckpt"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_auto_starts_fresh_in_an_empty_run_directory(debug_run, tmp_path):
    result = train_on_debug_data(
        debug_run,
        tmp_path / "run",
        *stage_args(debug_run, "diffusion")[:2],
        "resume=auto",
        "diffusion.max_steps=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no checkpoint yet, starting" in result.stdout + result.stderr
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 2
