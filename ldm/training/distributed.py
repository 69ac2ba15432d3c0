"""Several processes, one run: which process does the once-per-job work, and the others wait.

``python -m ldm.train`` may start as one process per GPU (SLURM's srun, torchrun, or Lightning's
own launcher). Before Lightning sets up the process group, the rank comes from the environment
those launchers set. Work done once per job (writing the shapes set, the run's config.yaml) is
done by global rank 0; the others wait for its result on the shared file system.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ldm.config import DataConfig
from ldm.data.shards import SYNTHETIC_SETS, ensure_synthetic_set, existing_synthetic_set

log = logging.getLogger(__name__)

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK")
"""Where launchers put the global rank (torchrun and Lightning's launcher, SLURM, MPI)."""


def global_rank() -> int:
    """This process's global rank, from the launcher's environment (0 when launched alone)."""
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def prepare_data(cfg: DataConfig, timeout: float = 3600.0, poll: float = 1.0) -> None:
    """Write the built-in set (shapes or shapes_compose) on rank 0; other ranks wait (up to `timeout` s)
    until it is complete."""
    if cfg.name not in SYNTHETIC_SETS:
        return
    rank = global_rank()
    if rank == 0:
        ensure_synthetic_set(cfg)
        return
    deadline = time.monotonic() + timeout
    while existing_synthetic_set(cfg) is None:
        if time.monotonic() > deadline:
            raise ValueError(
                f"rank {rank} waited {timeout:.0f} s for rank 0 to write the {cfg.name} set under "
                f"{Path(cfg.root).resolve()}: data.root must be on a file system that all ranks share"
            )
        time.sleep(poll)
    log.info("rank %d: the %s set written by rank 0 is complete", rank, cfg.name)
