"""Sweep workers that stop when the `mergelab run` process that launched them dies.

The joblib launcher runs jobs in loky worker processes; killed with SIGKILL, the parent cannot tell them to
stop, and a worker in the middle of a merge or evaluation would keep running (and holding memory) as an
orphan. `mergelab run` exports its PID in `SWEEP_PID_VARIABLE` before launching; a job running in a
direct child of that process starts a daemon thread that exits the worker as soon as it is re-parented
(its parent died). Jobs run in the launching process itself (basic launcher) or elsewhere (SLURM, Ray)
start nothing.
"""

from __future__ import annotations

import os
import threading
import time

SWEEP_PID_VARIABLE = "MERGELAB_SWEEP_PID"
POLL_SECONDS = 0.5
EXIT_CODE = 137  # as if killed, like the parent

_started = False


def stop_with_parent() -> bool:
    """Start the watchdog once in this process if it is a worker of a `mergelab run` sweep; True if running."""
    global _started
    launcher = os.environ.get(SWEEP_PID_VARIABLE)
    parent = os.getppid()
    if _started or launcher is None or str(parent) != launcher:
        return _started
    threading.Thread(target=_watch, args=(parent,), name="mergelab-parent-watchdog", daemon=True).start()
    _started = True
    return True


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(EXIT_CODE)
