"""Runs `mergelab merge ARGS` and pauses at one chosen moment so that a test can kill it there.

    python tests/kill_driver.py MOMENT merge base=... out=...

MOMENT is `start` (temporary directory laid out, nothing written), `write:N` (after the N-th tensor is
written, on the writer thread), `finish` (every tensor written, before the output is put in place),
`rename:N` (before the N-th rename of a path) or `renamed:N` (after it). At the moment the driver prints
`PAUSED` on stdout and sleeps `PAUSE_SECONDS`, then carries on. Only the test's process patches mergelab;
the engine has no test hooks.
"""

from __future__ import annotations

import pathlib
import sys
import threading
import time

PAUSE_SECONDS = 2.0


def pause() -> None:
    print("PAUSED", flush=True)
    time.sleep(PAUSE_SECONDS)


def install(moment: str) -> None:
    from mergelab.engine.output import CheckpointOutput
    from mergelab.engine.safetensors_io import SafetensorsWriter

    kind, _, count = moment.partition(":")
    target = int(count) if count else 0
    seen = {"write": 0, "rename": 0}
    lock = threading.Lock()
    if kind == "start":
        real_start = CheckpointOutput.start

        def start(self, *args, **kwargs):
            real_start(self, *args, **kwargs)
            pause()

        CheckpointOutput.start = start
    elif kind == "finish":
        real_finish = CheckpointOutput.finish

        def finish(self):
            pause()
            return real_finish(self)

        CheckpointOutput.finish = finish
    elif kind == "write":
        real_write = SafetensorsWriter.write

        def write(self, name, tensor):
            real_write(self, name, tensor)
            with lock:
                seen["write"] += 1
                reached = seen["write"] == target
            if reached:
                pause()

        SafetensorsWriter.write = write
    elif kind in {"rename", "renamed"}:
        real_rename = pathlib.Path.rename

        def rename(self, destination):
            seen["rename"] += 1
            if kind == "rename" and seen["rename"] == target:
                pause()
            result = real_rename(self, destination)
            if kind == "renamed" and seen["rename"] == target:
                pause()
            return result

        pathlib.Path.rename = rename
    else:
        raise SystemExit(f"unknown moment {moment!r}")


def main() -> int:
    moment, *argv = sys.argv[1:]
    install(moment)
    from mergelab.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())
