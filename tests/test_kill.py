"""SIGKILL and SIGTERM at chosen moments of a multi-shard `mergelab merge`: `out` is always the old complete
output or the new complete one, SIGTERM leaves no temporary behind, and after SIGKILL the next merge to the
same `out` leaves none (issue 16, parts 1 and 3)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mergelab.cli import main as cli
from mergelab.engine.placement import recover

ROOT = Path(__file__).resolve().parents[1]
SHARD_OPTIONS = ["device=cpu", "max_shard_size=20KB", "progress=false"]


def merge_args(family, out, method: str) -> list[str]:
    experts = ",".join(str(path) for path in family["experts"])
    return ["merge", f"merge={method}", f"base={family['base']}", f"experts=[{experts}]", f"out={out}"]


def digests(directory: Path) -> dict[str, str] | None:
    if not directory.exists():
        return None
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


def temporaries(out: Path) -> list[str]:
    return sorted(path.name for path in out.parent.iterdir() if path.name.startswith(f".{out.name}."))


@pytest.fixture(scope="module")
def outputs(llama_family, tmp_path_factory):
    """The old output (average) and the new one (task arithmetic), each merged once, uninterrupted."""
    root = tmp_path_factory.mktemp("kill_reference")
    for name, method in (("old", "average"), ("new", "task_arithmetic")):
        assert cli(merge_args(llama_family, root / name, method) + SHARD_OPTIONS) == 0
    shards = list((root / "new").glob("model-*.safetensors"))
    assert len(shards) >= 3, "the kill test needs a multi-shard output"
    return {"old": root / "old", "new": root / "new", "tensors": _tensor_count(root / "new")}


def _tensor_count(directory: Path) -> int:
    import json

    return len(json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"])


MOMENTS = [
    # (moment, signal, overwrite): renames 1-3 replace an existing out (out aside, new in, old to trash);
    # without overwrite there is one rename (new in).
    pytest.param("start", signal.SIGKILL, False, marks=pytest.mark.slow),
    pytest.param("start", signal.SIGTERM, True, marks=pytest.mark.slow),
    pytest.param("write:early", signal.SIGKILL, True, marks=pytest.mark.slow),
    pytest.param("write:late", signal.SIGTERM, False, marks=pytest.mark.slow),
    pytest.param("finish", signal.SIGKILL, False, marks=pytest.mark.slow),
    pytest.param("finish", signal.SIGTERM, True, marks=pytest.mark.slow),
    pytest.param("rename:1", signal.SIGKILL, True, marks=pytest.mark.slow),
    ("renamed:1", signal.SIGKILL, True),  # the old output moved aside, the new one not yet in place
    pytest.param("renamed:1", signal.SIGTERM, True, marks=pytest.mark.slow),
    pytest.param("renamed:1", signal.SIGKILL, False, marks=pytest.mark.slow),
    pytest.param("renamed:2", signal.SIGKILL, True, marks=pytest.mark.slow),
    pytest.param("renamed:3", signal.SIGTERM, True, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("moment", "signum", "overwrite"), MOMENTS)
def test_kill_at_any_moment_leaves_old_or_new_and_nothing_behind(
    llama_family, outputs, tmp_path, moment, signum, overwrite
):
    out = tmp_path / "out"
    if overwrite:
        shutil.copytree(outputs["old"], out)
    if moment.startswith("write:"):
        half = outputs["tensors"] // 2
        low, high = (1, half) if moment.endswith("early") else (half, outputs["tensors"] - 1)
        seeded = random.Random(f"16-{moment}-{signum}-{overwrite}")  # which write the moment follows
        moment = f"write:{seeded.randint(low, high)}"
    args = merge_args(llama_family, out, "task_arithmetic") + SHARD_OPTIONS
    args += ["overwrite=true"] if overwrite else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "kill_driver.py"), moment, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = process.stdout.readline()
    assert line.strip() == "PAUSED", f"never reached {moment}: {line!r} {process.stderr.read()}"
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    old, new = digests(outputs["old"]), digests(outputs["new"])
    allowed = ((old if overwrite else None), new)
    if signum == signal.SIGTERM:
        assert process.returncode == 143, err
        assert digests(out) in allowed, f"{moment}: out is neither old nor new complete"
        assert temporaries(out) == [], "SIGTERM removes the merge's own temporary directory"
    else:
        assert process.returncode == -signal.SIGKILL
        if digests(out) is None and overwrite:  # killed between the renames: the old output lies aside
            assert [name for name in temporaries(out) if name.startswith(".out.old-")]
        assert recover(out) == []  # what the next merge does first
        assert digests(out) in allowed, f"{moment}: out is neither old nor new complete after recovery"
    # The next merge to the same out cleans up whatever the dead one left, and replaces what is there.
    assert cli(merge_args(llama_family, out, "task_arithmetic") + SHARD_OPTIONS + ["overwrite=true"]) == 0
    assert digests(out) == new and temporaries(out) == []
