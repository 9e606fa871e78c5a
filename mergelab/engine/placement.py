"""Putting a finished output directory in place without ever losing one, and cleaning up after dead runs.

An output is written into a hidden sibling `.<stem>.partial-<pid>-<start>-<token>` and renamed into place.
Replacing an existing output takes two renames: the old one is first moved aside to
`.<stem>.old-<pid>-<start>-<token>`, then the new one moved in, then the old one removed. Every sibling's
name records its owner: the process id and the process's start time (so a reused pid is not mistaken for the
owner). The next merge to the same output calls `recover` first: for a sibling whose owner is dead, an
`old` one is moved back when the output is missing (a run killed between the two renames) and everything
else is removed; siblings whose owner may be alive are named and left alone. `<stem>` is the output's name,
or for a long name a prefix and a hash of it, so that a sibling's name stays within 255 bytes.

`overwrite` is strict: `False`, `True` (replace only a directory mergelab wrote, one with `mergelab.json`)
or `"force"` (replace anything). An empty directory is not an output and may always be replaced.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from mergelab.engine.checkpoint import CheckpointError
from mergelab.engine.provenance import PROVENANCE_FILE
from mergelab.engine.termination import deferred_termination

OVERWRITE_CHOICES = (False, True, "force")
_STEM_LIMIT = 160  # bytes of the output's name kept in a sibling's name before the hash
_SIBLING = re.compile(
    r"\.(?P<stem>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)(?:-(?P<start>\d+))?-(?P<token>[0-9a-f]{8})"
)


def check_overwrite(overwrite: object) -> bool | str:
    """`overwrite` itself when it is one of False, True, "force"; anything else (a string "false", 1) is an error."""
    if overwrite is True or overwrite is False or overwrite == "force":
        return overwrite
    raise CheckpointError(f"overwrite={overwrite!r} must be true, false or force")


def check_name_length(path: Path) -> None:
    """Refuse an output name longer than its file system allows, before anything is written."""
    limit = _name_limit(path.parent)
    if len(os.fsencode(path.name)) > limit:
        raise CheckpointError(
            f"output name {path.name[:40]}... is {len(os.fsencode(path.name))} bytes; "
            f"names on this file system are limited to {limit} bytes"
        )


def _name_limit(directory: Path) -> int:
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no such setting
        return 255


def check_replaceable(path: Path, overwrite: bool | str) -> None:
    """Refuse to replace an existing `path` unless `overwrite` allows replacing what it is."""
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not any(path.iterdir()):
        return
    if overwrite == "force":
        return
    if not overwrite:
        raise CheckpointError(
            f"output {path} already exists; pass overwrite=true to replace it "
            "(or overwrite=force if mergelab did not write it)"
        )
    if not (path.is_dir() and (path / PROVENANCE_FILE).is_file()):
        kind = "a directory mergelab did not write (no mergelab.json)" if path.is_dir() else "not a directory"
        raise CheckpointError(
            f"output {path} is {kind}; overwrite=true replaces only mergelab outputs, "
            "pass overwrite=force to replace it anyway"
        )


def sibling_stem(name: str) -> str:
    """The part of a hidden sibling's name that stands for the output `name`."""
    encoded = os.fsencode(name)
    if len(encoded) <= _STEM_LIMIT + 20:
        return name
    prefix = os.fsdecode(encoded[:_STEM_LIMIT]).encode("utf-8", "ignore").decode("utf-8", "ignore")
    return f"{prefix}~{hashlib.sha256(encoded).hexdigest()[:16]}"


def process_start(pid: int) -> int | None:
    """When process `pid` started, in hundredths of a second since the epoch; None if it is gone or hidden."""
    try:
        return round(psutil.Process(pid).create_time() * 100)
    except (psutil.Error, OSError):
        return None


def new_sibling_path(final: Path, kind: str) -> Path:
    """A fresh sibling name of `kind` ("partial" or "old") owned by this process (not created)."""
    pid = os.getpid()
    start = process_start(pid)
    owner = f"{pid}-{start}" if start is not None else str(pid)
    return final.parent / f".{sibling_stem(final.name)}.{kind}-{owner}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Sibling:
    """A hidden sibling of an output left by a run, and who made it."""

    path: Path
    kind: str
    pid: int
    start: int | None  # None for siblings from mergelab versions that recorded no start time

    def owner_dead(self) -> bool:
        """True only when provably dead: the pid is gone, a zombie, or now another process (later start)."""
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
            started = round(process.create_time() * 100)
        except psutil.NoSuchProcess:
            return True
        except (psutil.Error, OSError):
            return False
        return self.start is not None and abs(started - self.start) > 1


def siblings(final: Path) -> list[Sibling]:
    """The hidden siblings that runs writing `final` left beside it, `old` ones first."""
    stem = sibling_stem(final.name)
    found = []
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _SIBLING.fullmatch(entry.name)
        if match and match["stem"] == stem:
            start = None if match["start"] is None else int(match["start"])
            found.append(Sibling(entry, match["kind"], int(match["pid"]), start))
    return sorted(found, key=lambda sibling: (sibling.kind != "old", sibling.path.name))


def recover(final: Path) -> list[str]:
    """Finish what dead runs writing `final` left: restore an output moved aside by a replacement that was
    killed, remove their temporaries. Returns one line per sibling that may still be in use (left alone)."""
    notes = []
    for sibling in siblings(final):
        if not sibling.owner_dead():
            notes.append(
                f"{sibling.path} may belong to a running merge (process {sibling.pid}); left in place"
            )
            continue
        if sibling.kind == "old" and not (final.exists() or final.is_symlink()):
            # Versions without a start time in the name kept the old output one level down.
            source = sibling.path / final.name if sibling.start is None else sibling.path
            if source.is_dir():
                source.rename(final)
                print(f"mergelab: restored {final} from an interrupted replacement", file=sys.stderr)
        shutil.rmtree(sibling.path, ignore_errors=True)
    return notes


def put_in_place(temp: Path, final: Path) -> None:
    """Rename the finished `temp` to `final`, moving an existing `final` aside first and removing it after.

    SIGTERM is held until the renames are done; a SIGKILL between them leaves the old output beside `final`
    for `recover` to restore.
    """
    trash = None
    try:
        with deferred_termination():
            if not (final.exists() or final.is_symlink()):
                temp.rename(final)
                return
            retired = new_sibling_path(final, "old")
            final.rename(retired)
            try:
                temp.rename(final)
            except OSError:
                retired.rename(final)  # put the old output back
                raise
            trash = new_sibling_path(final, "partial")  # never restored, whatever happens while it goes
            retired.rename(trash)
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
