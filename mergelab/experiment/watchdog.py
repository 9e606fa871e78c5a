"""Sweep workers that stop when the `mergelab run` process that launched them dies.

The joblib launcher runs jobs in loky worker processes; killed with SIGKILL, the parent cannot tell them to
stop, and a worker in the middle of a merge or evaluation would keep running (and holding memory) as an
orphan. `mergelab run` exports which process it is (`host:pid:start time`) in `SWEEP_VARIABLE` before
launching. A job on the same host that finds this process gone (also a zombie: killed, not yet reaped)
exits at once, for a worker that only got its job after the parent died; otherwise it starts a daemon
thread that exits the worker as soon as the process goes. Jobs on other hosts (SLURM) and jobs run by
the launching process itself (basic launcher) start nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import psutil

SWEEP_VARIABLE = "MERGELAB_SWEEP_PROCESS"
POLL_SECONDS = 0.5
EXIT_CODE = 137  # as if killed, like the parent

_started = False


@contextlib.contextmanager
def sweep_process_exported() -> Iterator[None]:
    """Name this process as the sweep's for the jobs launched inside the block (they inherit the
    environment); the previous value is restored afterwards."""
    previous = os.environ.get(SWEEP_VARIABLE)
    started = psutil.Process().create_time()
    os.environ[SWEEP_VARIABLE] = f"{socket.gethostname()}:{os.getpid()}:{started!r}"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SWEEP_VARIABLE, None)
        else:
            os.environ[SWEEP_VARIABLE] = previous


def _sweep_process() -> tuple[int, float] | None:
    """(pid, start time) of the sweep's process when it was started on this host, else None."""
    host, _, rest = os.environ.get(SWEEP_VARIABLE, "").partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid or int(pid) == os.getpid():
        return None
    return int(pid), float(started)


def _alive(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_with_parent() -> bool:
    """In a job of a sweep launched from this host: exit now if the sweep's process is gone, else watch it
    from a daemon thread (started once per process). True when watching."""
    global _started
    sweep = _sweep_process()
    if _started or sweep is None:
        return _started
    if not _alive(*sweep):
        os._exit(EXIT_CODE)
    threading.Thread(target=_watch, args=sweep, name="mergelab-sweep-watchdog", daemon=True).start()
    _started = True
    return True


def _watch(pid: int, started: float) -> None:
    while _alive(pid, started):
        time.sleep(POLL_SECONDS)
    os._exit(EXIT_CODE)
