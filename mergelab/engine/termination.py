"""SIGTERM while an output is being written: exit through the normal clean-up, never between two renames.

Inside `clean_exit_on_sigterm`, a SIGTERM raises `SystemExit(143)` in the main thread, so the `with` blocks
around the merge remove its temporary directory before the process ends (143 is the exit status a SIGTERM
kill reports). Inside `deferred_termination` the signal is held and acted on when the block ends, so the
renames that put an output in place are never cut in half by it. The handler is installed only in the main
thread and only where SIGTERM still has its default action: an application's own handler is left alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM
_state = {"deferring": 0, "pending": False}


def _on_sigterm(signum, frame) -> None:
    if _state["deferring"]:
        _state["pending"] = True
        return
    raise SystemExit(SIGTERM_EXIT_STATUS)


@contextlib.contextmanager
def clean_exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into `SystemExit(143)` for the duration of the block (main thread, default action only)."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def deferred_termination() -> Iterator[None]:
    """Hold a SIGTERM that arrives during the block; exit with 143 once it ends."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
    if not _state["deferring"] and _state["pending"]:
        _state["pending"] = False
        raise SystemExit(SIGTERM_EXIT_STATUS)
