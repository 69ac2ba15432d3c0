"""Tests for ldm/training/loggers.py: W&B runs as a cluster user gets them (offline without an API
key, one run per stage, continued on resume, read back from W&B's own run files), and TensorBoard.

Nothing here reaches the network: HOME is a temporary folder (no netrc, no W&B settings), every
WANDB_* variable is removed (the code must choose offline itself), and HTTP(S) proxies point at a
closed local port, so that any request would fail at once instead of leaving the machine.
"""

import json
import logging
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm.config import LoggerConfig, TrainConfig
from ldm.training.loggers import (
    RUN_IDS_FILE,
    RunDirWandbLogger,
    RunIds,
    build_logger,
    git_commit,
    new_run_id,
    wandb_credentials_found,
)
from tests.conftest import ROOT
from tests.training.wandb_log import OfflineRun

CLOSED_PORT = "http://127.0.0.1:9"
PROMPTS = ["a red circle", "a blue square"]  # the debug preset's trainer.sample_prompts
SEEDS_PER_PROMPT = 4  # SampleGridCallback's n_per_prompt


def offline_env(home: Path) -> dict[str, str]:
    """The environment of a user without W&B credentials, with every HTTP(S) request blocked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    for key in ("NETRC", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "HYDRA_FULL_ERROR"):
        env.pop(key, None)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[key] = CLOSED_PORT
    env.update(HOME=str(home), NO_PROXY="", no_proxy="", PYTHONUNBUFFERED="1")
    return env


def train(run_dir: Path, data_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m ldm.train experiment=debug` in `run_dir`, offline, HOME beside the run directory."""
    home = run_dir.parent / "home"
    home.mkdir(exist_ok=True)
    args = [
        "-m",
        "ldm.train",
        "experiment=debug",
        f"hydra.run.dir={run_dir}",
        f"data.root={data_root}",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=offline_env(home), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


def offline_runs(run_dir: Path) -> list[Path]:
    """The W&B run files of `run_dir`, oldest first."""
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def expected_commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Both stages of the debug preset with logger=wandb, the discriminator on from step 1 and LPIPS
    (random weights), so that every stage-1 loss term is logged."""
    import torch
    from safetensors.torch import save_file

    from ldm.autoencoder.perceptual import LPIPS, lpips_state_dict

    base = tmp_path_factory.mktemp("wandb")
    torch.manual_seed(0)
    lpips = LPIPS()
    for lin in lpips.lins:
        lin.model[1].weight.data.uniform_(0.0, 1.0)  # LPIPS heads are non-negative
    lpips_file = base / "lpips_random.safetensors"
    save_file(lpips_state_dict(lpips), str(lpips_file))
    run_dir = base / "run"
    result = train(
        run_dir,
        base / "data",
        "logger=wandb",
        "autoencoder.disc_start=1",
        "autoencoder.lr_schedule=constant",  # the shapes presets decay it; constant, the logged rate is the set one
        f"autoencoder.perceptual_weights={lpips_file}",
    )
    return run_dir, result


@pytest.mark.slow
def test_offline_wandb_runs_one_per_stage(wandb_run):
    run_dir, result = wandb_run
    output = result.stdout + result.stderr
    assert output.count("W&B: no API key") == 2  # one line per stage: the code chose offline itself
    assert f"wandb sync {run_dir / 'wandb'}" in output
    files = offline_runs(run_dir)
    assert len(files) == 2
    runs = {run.job_type: run for run in map(OfflineRun.read, files)}
    assert set(runs) == {"autoencoder", "diffusion"}
    ids = json.loads((run_dir / RUN_IDS_FILE).read_text())
    assert ids == {stage: run.run_id for stage, run in runs.items()}
    assert ids["autoencoder"] != ids["diffusion"]
    for stage, run in runs.items():
        assert run.group == run_dir.name and run.display_name == f"{run_dir.name}-{stage}"
        assert run.project == "ldm"
        # The whole resolved config, and the code's commit.
        assert run.config["data"]["num_train"] == 128
        assert run.config["data"]["root"] == str(run_dir.parent / "data")
        assert run.config["trainer"]["sample_prompts"] == PROMPTS
        assert run.config["sampler"]["steps"] == 4 and run.config["stage"] == "all"
        assert run.config["git_commit"] == expected_commit()
        assert [step for step, _ in run.series("train/skipped_steps")] == [0, 1, 2, 3]
        assert [value for _, value in run.series("data/corrupt")] == [0, 0, 0, 0]
        read = [value for _, value in run.series("data/read")]
        assert len(read) == 4 and read == sorted(read) and read[0] >= run.config["data"]["batch_size"]
        assert len(run.series("train/grad_norm")) == 4
        assert all(math.isfinite(v) and v > 0 for _, v in run.series("train/grad_norm"))

    ae, ldm = runs["autoencoder"], runs["diffusion"]
    # Stage 1: every loss term of the step, the adversarial ones from disc_start=1 on.
    for term in ("loss", "rec_loss", "kl_loss", "p_loss", "logvar"):
        assert [step for step, _ in ae.series(f"train/{term}")] == [0, 1, 2, 3], term
    for term in ("g_loss", "d_weight", "d_loss", "logits_real", "logits_fake"):
        assert [step for step, _ in ae.series(f"train/{term}")] == [1, 2, 3], term
    assert [v for _, v in ae.series("lr-Adam")] == [ae.config["autoencoder"]["learning_rate"]] * 4
    assert len(ae.series("lr-Adam-1")) == 4  # the discriminator's optimizer
    (reconstructions,) = [v for _, v in ae.series("val/reconstructions/_type")]
    assert reconstructions == "images/separated"
    # Stage 2: its own loss series, never on the same chart as stage 1's.
    losses = ldm.series("train/loss")
    assert [step for step, _ in losses] == [0, 1, 2, 3]
    assert max(v for _, v in losses) < min(v for _, v in ae.series("train/loss"))
    assert not any(key.startswith("train/rec_loss") for row in ldm.history for key in row)
    # Cosine decay to zero at diffusion.max_steps, no warm-up (the debug preset).
    lr, max_steps = ldm.config["diffusion"]["learning_rate"], ldm.config["diffusion"]["max_steps"]
    expected_lr = [lr * 0.5 * (1 + math.cos(math.pi * k / max_steps)) for k in range(4)]
    assert [v for _, v in ldm.series("lr-AdamW")] == pytest.approx(expected_lr)
    # Throughput over a window of 2 batches: from the second batch on, samples = 32 x batches.
    batches = dict(ldm.series("train/device/batches_per_sec"))
    samples = dict(ldm.series("train/device/samples_per_sec"))
    assert sorted(samples) == [1, 2, 3]
    assert all(samples[k] == pytest.approx(32 * batches[k]) for k in samples)


@pytest.mark.slow
def test_sample_grid_and_table_reach_wandb(wandb_run):
    run_dir, _ = wandb_run
    ldm = next(run for run in map(OfflineRun.read, offline_runs(run_dir)) if run.job_type == "diffusion")
    files = offline_runs(run_dir)[-1].parent / "files"
    saved = np.asarray(Image.open(run_dir / "images" / "samples-step000004.png").convert("RGB"), dtype=int)
    # The grid: one image, captioned with the prompts, the same pixels as the PNG the callback saved.
    ((step, names),) = ldm.series("samples/filenames")
    assert step == 4 and [c for _, c in ldm.series("samples/captions")] == [[" | ".join(PROMPTS)]]
    grid = np.asarray(Image.open(files / names[0]).convert("RGB"), dtype=int)
    assert grid.shape == saved.shape == (2 * 33 + 1, SEEDS_PER_PROMPT * 33 + 1, 3)
    assert np.abs(grid - saved).max() <= 1
    # The table: one row (step, prompt, seed, image) per sample, in the run's files...
    ((_, path),) = ldm.series("sample_table/path")
    table = json.loads((files / path).read_text())
    assert table["columns"] == ["step", "prompt", "seed", "image"]
    expected_rows = [[4, p, s] for p in PROMPTS for s in range(SEEDS_PER_PROMPT)]
    assert [row[:3] for row in table["data"]] == expected_rows
    # ...and with its images in the run's table artifact, each the tile of its prompt and seed.
    (artifact,) = [a for a in ldm.artifacts if a.type == "run_table"]
    staged = {entry.path: Path(entry.local_path) for entry in artifact.manifest.contents}
    full = json.loads(staged["sample_table.table.json"].read_text())
    assert [row[:3] for row in full["data"]] == expected_rows
    for i, (_, _, _, image) in enumerate(full["data"]):
        tile = np.asarray(Image.open(staged[image["path"]]).convert("RGB"), dtype=int)
        row, column = divmod(i, SEEDS_PER_PROMPT)
        expected = saved[1 + 33 * row : 33 * (row + 1), 1 + 33 * column : 33 * (column + 1)]
        assert tile.shape == (32, 32, 3) and np.abs(tile - expected).max() <= 1


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_wandb_run(wandb_run, tmp_path):
    data_root = wandb_run[0].parent / "data"
    run_dir = tmp_path / "run"
    train(run_dir, data_root, "logger=wandb", "stage=autoencoder", "autoencoder.max_steps=2")
    ids = json.loads((run_dir / RUN_IDS_FILE).read_text())
    assert list(ids) == ["autoencoder"]
    train(run_dir, data_root, "logger=wandb", "stage=autoencoder", "resume=auto")  # up to max_steps=4
    assert json.loads((run_dir / RUN_IDS_FILE).read_text()) == ids
    first, second = map(OfflineRun.read, offline_runs(run_dir))
    assert first.run_id == second.run_id == ids["autoencoder"]
    assert [step for step, _ in first.series("train/loss")] == [0, 1]
    assert [step for step, _ in second.series("train/loss")] == [2, 3]


def read_events(folder: Path) -> dict[str, list[tuple[int, object]]]:
    """tag -> [(step, scalar value or summary kind)] of a folder's TensorBoard event files.

    Each file is a TFRecord stream: uint64 length, uint32 masked CRC of the length, the serialised
    Event, uint32 masked CRC of the data (all little-endian).
    """
    from tensorboardX.proto.event_pb2 import Event

    tags: dict[str, list] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                tags.setdefault(value.tag, []).append(
                    (event.step, value.simple_value if kind == "simple_value" else kind)
                )
    return tags


@pytest.mark.slow
def test_tensorboard_event_files_for_both_stages(wandb_run, tmp_path):
    data_root = wandb_run[0].parent / "data"
    run_dir = tmp_path / "run"
    train(run_dir, data_root, "logger=tensorboard", "autoencoder.max_steps=2", "diffusion.max_steps=2")
    ae = read_events(run_dir / "logs" / "tensorboard" / "autoencoder")
    ldm = read_events(run_dir / "logs" / "tensorboard" / "diffusion")
    for term in ("loss", "rec_loss", "kl_loss", "grad_norm"):
        assert [step for step, _ in ae[f"train/{term}"]] == [0, 1], term
    assert [step for step, _ in ldm["train/loss"]] == [0, 1]
    assert [step for step, _ in ldm["train/grad_norm"]] == [0, 1]
    assert [v for _, v in ldm["lr-AdamW"]] == pytest.approx([5e-4, 5e-4 * 0.5 * (1 + math.cos(math.pi / 2))])
    assert "train/rec_loss" not in ldm
    assert ldm["samples"] == [(2, "image")]
    assert not (run_dir / "wandb").exists()


# Fast checks of the pieces, no training.


def test_offline_is_forced_without_an_api_key(tmp_path, monkeypatch, caplog):
    for key in [k for k in os.environ if k.startswith("WANDB_")] + ["NETRC"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    config = TrainConfig(logger=LoggerConfig(kind="wandb", project="p"))
    with caplog.at_level(logging.INFO, logger="ldm.training.loggers"):
        logger = build_logger(config.logger, tmp_path / "run", "diffusion", config)
    assert isinstance(logger, RunDirWandbLogger) and logger._offline
    assert logger._wandb_init["group"] == "run" and logger._wandb_init["job_type"] == "diffusion"
    assert logger._wandb_init["resume"] == "allow" and logger._wandb_init["name"] == "run-diffusion"
    (line,) = [r.getMessage() for r in caplog.records if "no API key" in r.getMessage()]
    assert f"wandb sync {tmp_path / 'run' / 'wandb'}" in line
    # With a key in the environment, the configured mode stands (no experiment is started here).
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not build_logger(config.logger, tmp_path / "run", "diffusion", config)._offline


def test_credentials_from_the_environment_or_a_netrc_entry_for_the_wandb_host(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("WANDB_")] + ["NETRC"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not wandb_credentials_found()
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine example.org login user password secret\n")
    netrc.chmod(0o600)
    assert not wandb_credentials_found()  # an entry for another host
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert wandb_credentials_found()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a W&B server of one's own
    assert not wandb_credentials_found()
    monkeypatch.delenv("WANDB_BASE_URL")
    settings = tmp_path / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\nbase_url = https://wandb.example.org\n")  # `wandb login --host`
    assert not wandb_credentials_found()
    netrc.write_text("machine wandb.example.org login user password " + "k" * 40 + "\n")
    assert wandb_credentials_found()
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_credentials_found()


def test_run_ids_are_kept_per_stage(tmp_path):
    ids = RunIds(tmp_path / RUN_IDS_FILE)
    assert ids.get("autoencoder") is None
    ids.set("autoencoder", "aaaa1111")
    ids.set("diffusion", "bbbb2222")
    ids.set("autoencoder", "cccc3333")
    assert RunIds(tmp_path / RUN_IDS_FILE).read() == {"autoencoder": "cccc3333", "diffusion": "bbbb2222"}
    assert [p.name for p in tmp_path.iterdir()] == [RUN_IDS_FILE]  # no partial file left behind
    run_id = new_run_id()
    assert len(run_id) == 8 and run_id.isalnum() and run_id == run_id.lower()


def test_git_commit_of_the_checkout_or_unknown(monkeypatch):
    assert git_commit() == expected_commit()
    monkeypatch.setenv("PATH", "")  # no git program
    assert git_commit() == "unknown"


def test_csv_and_tensorboard_folders(tmp_path):
    config = TrainConfig()
    csv = build_logger(LoggerConfig(kind="csv"), tmp_path, "autoencoder", config)
    assert Path(csv.log_dir) == tmp_path / "logs" / "autoencoder"
    board = build_logger(LoggerConfig(kind="tensorboard"), tmp_path, "diffusion", config)
    assert Path(board.log_dir) == tmp_path / "logs" / "tensorboard" / "diffusion"
    with pytest.raises(ValueError, match="unknown logger 'mlflow'; available: csv, wandb, tensorboard"):
        build_logger(LoggerConfig(kind="mlflow"), tmp_path, "diffusion", config)
