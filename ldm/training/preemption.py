"""Signals that ask a run to stop (preemption, SLURM's pre-timeout signal), handled at step boundaries.

SIGTERM and SIGUSR1 only set a flag: writing a checkpoint inside a signal handler can deadlock
(Lightning's in-handler save hangs: pytorch-lightning#21406), and under DDP every rank must take
part in the save. ``RunCheckpoints`` reads the flag at the end of each training step, all ranks
agree on it, the checkpoint is written, and the fit stops; ``python -m ldm.train`` then exits with
:data:`PREEMPTED_EXIT_CODE`, and ``resume=auto`` continues the run.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Optional

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""The signals that stop a run with a checkpoint: SIGTERM (preemption, ``scancel``, Kubernetes) and
SIGUSR1 (SLURM's ``--signal=USR1@120`` before the time limit)."""
PREEMPTED_EXIT_CODE = 75
"""Exit status of a run stopped by a signal after writing its checkpoint (sysexits' EX_TEMPFAIL:
try again, i.e. rerun with ``resume=auto``)."""


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint at a step boundary."""

    def __init__(self, signum: int, checkpoint: str, step: int):
        self.signum, self.checkpoint, self.step = signum, checkpoint, step
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}: checkpoint {checkpoint}; continue with resume=auto")


class StopFlag:
    """Set by SIGTERM or SIGUSR1 (the handler does nothing else); read at step boundaries."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum

    def install(self) -> None:
        """Make this flag the handler of the stop signals (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)


STOP = StopFlag()
"""The process's stop flag (a registry declared as such: signal handlers are per process)."""
