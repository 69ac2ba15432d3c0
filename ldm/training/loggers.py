"""The metrics logger of each stage: CSV files, TensorBoard event files, or one W&B run per stage.

W&B: the two stages are two runs of one group (the run directory's name), with job types
``autoencoder`` and ``diffusion``, so that stage 1's losses (~1e3) and stage 2's (~1e-2) never share
a chart. Each run's config holds the whole resolved TrainConfig and the git commit of the code.
Each stage's run id is kept in ``<run dir>/wandb-ids.json``, so that a resumed or requeued job
(``resume=auto`` in the same run directory) continues the same W&B run. Without an API key
(``WANDB_API_KEY`` or a netrc entry for the W&B host) the run is written offline, to be uploaded
later with ``wandb sync``: a job on a compute node never waits for the network.
"""

from __future__ import annotations

import configparser
import json
import logging
import netrc
import os
import secrets
import string
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ldm.config import LoggerConfig, TrainConfig
from ldm.training.grad_norm import GradientNorm
from ldm.training.validate import LOGGERS

log = logging.getLogger(__name__)

WANDB_HOST = "https://api.wandb.ai"
"""The W&B server when ``WANDB_BASE_URL`` and W&B's settings file name none."""
RUN_IDS_FILE = "wandb-ids.json"
"""The file in the run directory that maps each stage to its W&B run id."""


def logging_callbacks() -> list[pl.Callback]:
    """What every stage logs besides its losses: the learning rates and the gradient norm, every step."""
    return [LearningRateMonitor(logging_interval="step"), GradientNorm()]


def build_logger(cfg: LoggerConfig, run_dir: Path, stage: str, config: TrainConfig) -> Logger:
    """The metrics logger of one stage (`config`: the resolved config, stored with a W&B run)."""
    if cfg.kind == "csv":
        return CSVLogger(save_dir=str(run_dir), name="logs", version=stage)
    if cfg.kind == "tensorboard":
        return TensorBoardLogger(
            save_dir=str(run_dir / "logs"), name="tensorboard", version=stage, default_hp_metric=False
        )
    if cfg.kind == "wandb":
        return build_wandb_logger(cfg, run_dir, stage, config)
    raise ValueError(f"unknown logger '{cfg.kind}'; available: {', '.join(LOGGERS)}")


def build_wandb_logger(cfg: LoggerConfig, run_dir: Path, stage: str, config: TrainConfig) -> WandbLogger:
    """The W&B run of one stage, offline when no API key is found, continuing the run of an earlier job."""
    offline = cfg.offline
    if not offline and os.environ.get("WANDB_MODE") != "disabled" and not wandb_credentials_found():
        offline = True
        if rank_zero_only.rank == 0:
            log.info(
                "W&B: no API key (WANDB_API_KEY or a netrc entry for %s): the %s run is written offline "
                "to %s; upload it later with: wandb sync %s",
                wandb_host(),
                stage,
                run_dir / "wandb",
                run_dir / "wandb" / "offline-run-*",
            )
    ids = RunIds(run_dir / RUN_IDS_FILE)
    return RunDirWandbLogger(
        ids,
        stage,
        project=cfg.project,
        name=f"{cfg.name or run_dir.name}-{stage}",
        group=run_dir.name,
        job_type=stage,
        id=ids.get(stage) or new_run_id(),
        resume="allow",
        save_dir=str(run_dir),
        offline=offline,
        config={**asdict(config), "git_commit": git_commit()},
    )


class RunDirWandbLogger(WandbLogger):
    """A WandbLogger that records its run id in the run directory when the run starts (on global
    rank 0, the only one that starts it), and finishes the run when its stage ends."""

    def __init__(self, ids: RunIds, stage: str, **kwargs: Any):
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            del self._wandb_init["anonymous"]  # Lightning passes None, which W&B warns is deprecated
        self.ids = ids
        self.stage = stage
        self._finished = False

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        started = self._experiment is None
        run = super().experiment
        if started and self.ids.get(self.stage) != run.id:
            self.ids.set(self.stage, run.id)
        return run

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Finish the run, so that the next stage (in this process) starts its own."""
        super().finalize(status)
        if self._experiment is not None and not self._finished:
            self._experiment.finish(exit_code=1 if status == "failed" else 0)
            self._finished = True


class RunIds:
    """The W&B run id of each stage, kept as JSON in the run directory (replaced atomically)."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, str]:
        """All stages' ids ({} before the first run starts)."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def get(self, stage: str) -> Optional[str]:
        """The run id of `stage`, or None when it has not run yet."""
        return self.read().get(stage)

    def set(self, stage: str, run_id: str) -> None:
        """Record the run id of `stage`."""
        ids = {**self.read(), stage: run_id}
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(ids, indent=2) + "\n")
        os.replace(partial, self.path)


def new_run_id(length: int = 8) -> str:
    """A random W&B run id (lower-case letters and digits, as W&B makes them)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def wandb_host() -> str:
    """The W&B server: ``WANDB_BASE_URL``, else the base_url of W&B's settings file, else W&B's cloud."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
    settings = configparser.ConfigParser()
    try:
        settings.read(config_dir / "settings")
    except configparser.Error:
        return WANDB_HOST
    return settings.get("default", "base_url", fallback=WANDB_HOST)


def wandb_credentials_found() -> bool:
    """Whether W&B has an API key without asking for one: ``WANDB_API_KEY`` (or an identity token
    file), or an entry for the W&B host in the netrc file (where ``wandb login`` writes it)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = os.environ.get("NETRC") or Path.home() / ".netrc"
    try:
        entry = netrc.netrc(path).authenticators(urlsplit(wandb_host()).netloc)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def git_commit() -> str:
    """The commit of the git checkout that holds this package's code, or ``unknown`` (never fails)."""
    package = Path(__file__).resolve().parent.parent

    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(
                ["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    # An installed copy that merely lies inside some other repository is not that repository's code.
    if git("ls-files", "--error-unmatch", "config.py") is None:
        return "unknown"
    return git("rev-parse", "HEAD") or "unknown"
