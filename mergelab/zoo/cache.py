"""Where the zoo lives and how its entries are written: atomically, with a manifest that detects damage."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


class ZooError(RuntimeError):
    """A zoo build that cannot go on (disk full, out of memory, unknown size)."""


def mergelab_home() -> Path:
    return Path(os.environ.get("MERGELAB_HOME", Path.home() / ".cache" / "mergelab")).expanduser()


def zoo_home() -> Path:
    return mergelab_home() / "zoo"


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a staging directory that becomes `target` only if the block completes."""
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # A concurrent build finished the same entry first; builds are deterministic, so keep its copy.
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if error.errno == errno.ENOSPC:
            raise ZooError(f"disk full while writing {target} (MERGELAB_HOME={mergelab_home()})") from None
        raise
    except MemoryError:
        shutil.rmtree(staging, ignore_errors=True)
        raise ZooError(f"out of memory while building {target}; try a smaller size") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def weights_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: dict) -> None:
    manifest = {**manifest, "sha256": weights_digest(directory)}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def read_manifest(directory: Path) -> dict | None:
    """The component's manifest if it is complete and its weights match it, else None (rebuild)."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if manifest.get("sha256") == weights_digest(directory) else None
