"""Multi-node runs as users start them: ``scripts/slurm/train.sbatch`` on a real (one-node, local) SLURM,
started by ``scripts/slurm/local_cluster.sh``, and two "nodes" on loopback with torchrun.

- a 2-task DDP job of the debug preset completes; both ranks trained, on different shards, and the
  stage-2 checkpoint samples;
- a job stopped by the pre-timeout signal (SIGUSR1 to its tasks, as ``--signal=USR1@120`` sends it)
  writes a checkpoint, requeues itself, resumes in the same run directory and ends with the weights
  of the same run done without interruption (bit for bit, on CPU);
- two torchrun "nodes" of one process each train the debug preset together.

Where SLURM cannot be installed or started, the SLURM tests are skipped with the reason, unless
``LDM_REQUIRE_SLURM=1`` (CI), which makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ldm.pipeline import Text2Image
from ldm.weights.checkpoint import read_checkpoint
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

CLUSTER = ROOT / "scripts" / "slurm" / "local_cluster.sh"
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
DEBUG_ON_CPU = (
    "experiment=debug",
    "trainer.accelerator=cpu",
    "trainer.strategy=ddp",
    "data.num_workers=0",
    "trainer.enable_progress_bar=false",
)
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}
"""The states of a job that has ended (``scontrol show job``)."""
STEPS, EVERY = 16, 4
"""The preempted job trains STEPS steps of stage 2 with a checkpoint every EVERY steps; it is
stopped just after its first one (the debug set's epoch is 8 steps per rank: the resumed part
crosses an epoch)."""
SHARD_LINE = re.compile(r"rank (\d+) of (\d+): \d+ training shards \((\S+) \.\.\. (\S+)\)")


def process_env(**extra: str) -> dict[str, str]:
    """This interpreter's environment for a training process (this venv's python first on PATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not an allocation's
    # One thread per process, as srun gives each task of --cpus-per-task=1: the requeue test compares
    # weights bit for bit with a run outside SLURM, and CPU kernels sum in another order on 2 threads.
    env.update(PYTHONUNBUFFERED="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def unavailable(reason: str) -> None:
    """Skip for want of SLURM, or fail where LDM_REQUIRE_SLURM=1 (CI) says it must be there."""
    if os.environ.get("LDM_REQUIRE_SLURM") == "1":
        pytest.fail(f"LDM_REQUIRE_SLURM=1, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm():
    """The environment in which sbatch and scontrol reach the local cluster: started for the session,
    its daemons stopped afterwards whatever happened."""
    if os.name != "posix" or os.geteuid() != 0:
        unavailable("the local SLURM cluster (scripts/slurm/local_cluster.sh) needs root")
    try:
        started = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
        if started.returncode != 0:
            lines = (started.stderr or started.stdout).strip().splitlines()
            unavailable(lines[-1] if lines else f"local_cluster.sh start exited with {started.returncode}")
        status = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        conf = status.stdout.splitlines()[0].removeprefix("SLURM_CONF=")
        yield process_env(SLURM_CONF=conf)
    finally:
        stopped = subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, text=True, timeout=300)
        assert stopped.returncode == 0, stopped.stderr


def slurm_command(env: dict[str, str], *args: str) -> str:
    """Run a SLURM client command; its stdout."""
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout


def submit(env: dict[str, str], log_dir: Path, run_dir: Path, *overrides: str) -> str:
    """Submit train.sbatch as one node with 2 CPU tasks of the debug preset; returns the job id."""
    args = [
        "sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
        "--gpus-per-node=0", f"--output={log_dir}/slurm-%j.out", str(SBATCH), *DEBUG_ON_CPU, *overrides,
    ]  # fmt: skip
    return slurm_command({**env, "LDM_RUN_DIR": str(run_dir)}, *args).strip().split(";")[0]


def job_info(env: dict[str, str], job: str) -> dict[str, str]:
    """The fields of ``scontrol show job`` (JobState, ExitCode, Restarts, ...)."""
    fields = slurm_command(env, "scontrol", "show", "job", "--oneliner", job).split()
    return dict(field.split("=", 1) for field in fields if "=" in field)


def wait_for_job(
    env: dict[str, str], job: str, log: Path, states: set[str], timeout: float
) -> dict[str, str]:
    """Poll the job until its state is one of `states`; cancel it and fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while (info := job_info(env, job))["JobState"] not in states:
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], env=env, timeout=60)
            text = log.read_text() if log.exists() else "(no log)"
            pytest.fail(f"job {job} still {info['JobState']} after {timeout:.0f} s:\n{text[-3000:]}")
        time.sleep(0.2)
    return info


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_nodes(run_dir: Path, *overrides: str) -> list[subprocess.Popen]:
    """`torchrun --nnodes 2 --node-rank R --nproc-per-node 1 -m ldm.train ...` for R = 0, 1 on loopback."""
    port = free_port()
    processes = []
    for node in range(2):
        command = [
            str(Path(sys.executable).parent / "torchrun"), "--nnodes=2", f"--node-rank={node}",
            "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "ldm.train",
            *DEBUG_ON_CPU, "trainer.num_nodes=2", "trainer.devices=1", f"hydra.run.dir={run_dir}", *overrides,
        ]  # fmt: skip
        processes.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=process_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return processes


def kill(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


def finish(processes: list[subprocess.Popen], timeout: float) -> list[str]:
    """Wait for every process (killing them all after `timeout` s); assert each exited 0; their outputs."""
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    finally:
        kill(processes)
    for rank, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"node {rank} exited with {process.returncode}:\n{output[-3000:]}"
    return outputs


def shards_by_rank(log: str) -> dict[int, set[tuple[str, str]]]:
    """rank -> the (first, last) training shards it logged reading; every line must say world size 2."""
    found: dict[int, set[tuple[str, str]]] = {}
    for rank, world, first, last in SHARD_LINE.findall(log):
        assert world == "2", f"rank {rank} logged world size {world}"
        found.setdefault(int(rank), set()).add((first, last))
    return found


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


@pytest.fixture(scope="session")
def two_task_job(slurm, tmp_path_factory) -> tuple[dict[str, str], str, Path, Path]:
    """The debug preset (both stages) as a SLURM job of 2 tasks on CPU: its scontrol fields, its log,
    its run directory and its data root."""
    base = tmp_path_factory.mktemp("slurm_job")
    run_dir, data = base / "run", base / "data"
    job = submit(slurm, base, run_dir, f"data.root={data}")
    log = base / f"slurm-{job}.out"
    info = wait_for_job(slurm, job, log, FINISHED, timeout=300)
    return info, log.read_text(), run_dir, data


@pytest.mark.slurm
def test_two_task_job_trains_with_ddp_and_its_checkpoint_samples(two_task_job):
    info, log, run_dir, _ = two_task_job
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-3000:]
    assert f"1 node(s) x 2 task(s), run directory {run_dir}" in log
    shards = shards_by_rank(log)
    assert sorted(shards) == [0, 1]  # both ranks of a world of 2 trained
    assert len(shards[0]) == len(shards[1]) == 1 and shards[0] != shards[1]  # on different shards
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert read_checkpoint(checkpoint)["global_step"] == 4  # the debug preset's diffusion.max_steps
    pipe = Text2Image.from_checkpoint(checkpoint, device="cpu")
    images = pipe(["a red circle"], [0], sampler=replace(pipe.sampler, steps=2))
    assert images.shape == (1, 3, 32, 32)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


@pytest.mark.slurm
def test_preempted_job_requeues_itself_and_ends_as_an_uninterrupted_run(slurm, two_task_job, tmp_path):
    _, _, first_job_dir, data = two_task_job
    args = (
        "stage=diffusion",
        f"autoencoder.ckpt_path={first_job_dir / 'autoencoder' / 'checkpoints' / 'last.ckpt'}",
        f"data.root={data}",
        f"diffusion.max_steps={STEPS}",
        f"trainer.checkpoint_every_n_steps={EVERY}",
        "trainer.keep_last=100",
    )
    # The same run, uninterrupted, with the same two ranks: outside SLURM, meanwhile.
    reference = start_two_nodes(tmp_path / "reference", *args)
    try:
        run_dir = tmp_path / "run"
        # W&B offline (its files in the run directory), to check that both starts log to one run.
        job = submit({**slurm, "WANDB_MODE": "offline"}, tmp_path, run_dir, *args, "logger=wandb")
        log = tmp_path / f"slurm-{job}.out"
        periodic = run_dir / "checkpoints" / f"step-{EVERY:08d}.ckpt"
        deadline = time.monotonic() + 240
        while not periodic.exists():
            state = job_info(slurm, job)["JobState"]
            assert state in ("PENDING", "RUNNING") and time.monotonic() < deadline, (
                f"job {job} is {state} without {periodic}:\n{log.read_text()[-3000:] if log.exists() else ''}"
            )
            time.sleep(0.1)
        # What --signal=USR1@120 does before the time limit: SIGUSR1 to the tasks of the job's steps.
        slurm_command(slurm, "scancel", "--signal=USR1", job)
        info = wait_for_job(slurm, job, log, {"PENDING"} | FINISHED, timeout=120)
        assert (info["JobState"], info["Restarts"]) == ("PENDING", "1"), log.read_text()[-3000:]
        # SLURM holds a requeued job back until its old credentials expire (AuthInfo cred_expire:
        # 120 s by default, 10 s on the local cluster); starting it sooner fails ("credential revoked").
        info = wait_for_job(slurm, job, log, FINISHED, timeout=300)
        text = log.read_text()
        ended = (info["JobState"], info["ExitCode"], info["Restarts"])
        assert ended == ("COMPLETED", "0:0", "1"), text[-3000:]
    except BaseException:
        kill(reference)
        raise
    finish(reference, timeout=300)

    # Two starts of the same job in one appended log, both in the same run directory.
    assert text.count(f"train.sbatch: job {job}, start") == 2
    first, second = text.split(f"train.sbatch: job {job}, start 2,")
    assert f"run directory {run_dir}," in first and second.startswith(
        f" 1 node(s) x 2 task(s), run directory {run_dir},"
    )
    # The first start: stopped by the signal (both ranks) with a checkpoint newer than the periodic one.
    stopped = {int(s) for s in re.findall(r"stopped by SIGUSR1 at step (\d+): checkpoint", first)}
    assert len(stopped) == 1 and first.count("stopped by SIGUSR1") == 2, first[-3000:]
    step = stopped.pop()
    assert EVERY < step < STEPS
    assert read_checkpoint(run_dir / "checkpoints" / f"step-{step:08d}.ckpt")["global_step"] == step
    assert f"requeueing job {job}" in first
    # The second: resume=auto continued from it (both ranks), and the steps went on from there.
    assert second.count(f"resume=auto: continuing from {run_dir / 'checkpoints'}/") == 2
    after = [int(s) for s in re.findall(r"checkpoint at step (\d+):", second)]
    assert after == list(range((step // EVERY + 1) * EVERY, STEPS + 1, EVERY)), after
    final = run_dir / "checkpoints" / "last.ckpt"
    assert read_checkpoint(final)["global_step"] == STEPS

    expected, got = weights(tmp_path / "reference" / "checkpoints" / "last.ckpt"), weights(final)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    at_signal = weights(run_dir / "checkpoints" / f"step-{step:08d}.ckpt")
    assert any(not torch.equal(at_signal[k], got[k]) for k in got)  # the second start trained
    # Both starts logged to the same W&B run: the id kept in the run directory, one offline run
    # folder per start with that id.
    run_id = json.loads((run_dir / "wandb-ids.json").read_text())["diffusion"]
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 2


def test_two_nodes_on_loopback_train_together(tmp_path):
    run_dir = tmp_path / "run"
    outputs = finish(start_two_nodes(run_dir, f"data.root={tmp_path / 'data'}"), timeout=300)
    shards = [shards_by_rank(output) for output in outputs]
    assert sorted(shards[0]) == [0] and sorted(shards[1]) == [1]  # node R is rank R of 2
    assert shards[0][0].isdisjoint(shards[1][1])  # reading different shards
    assert "rank 1: the shapes set written by rank 0 is complete" in outputs[1]
    assert read_checkpoint(run_dir / "autoencoder" / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
