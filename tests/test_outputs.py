"""Outputs never lose data: what `overwrite` may replace, recovery after a killed replacement, stale
temporaries, output names and paths that are not what was asked (issue 16, parts 1, 3 and 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mergelab.api.merging import merge
from mergelab.cli import main as cli
from mergelab.engine.checkpoint import CheckpointError
from mergelab.engine.placement import new_sibling_path, process_start, recover, sibling_stem

BASE = {"w": torch.zeros(4)}
EXPERT = {"w": torch.ones(4)}


def merge_to(out, **options):
    return merge(BASE, [EXPERT], "task_arithmetic", out, progress=False, scale=0.5, **options)


def hidden_siblings(out):
    return sorted(path.name for path in out.parent.iterdir() if path.name.startswith("."))


def dead_process() -> tuple[int, int]:
    """The pid and start time of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    start = process_start(child.pid)
    child.kill()
    child.wait()
    return child.pid, start


@pytest.mark.parametrize("value", ["false", "no", "true", 1, 0, None, "FORCE"])
def test_overwrite_is_strict_in_python(tmp_path, value):
    out = tmp_path / "out"
    merge_to(out)
    before = load_file(out / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"overwrite={value!r} must be true, false or force"):
        merge(BASE, [EXPERT], "task_arithmetic", out, progress=False, scale=1.0, overwrite=value)
    assert torch.equal(load_file(out / "model.safetensors")["w"], before["w"])


@pytest.mark.parametrize("value", ["'false'", "no", "1", "yes"])
def test_overwrite_is_strict_on_the_command_line(tmp_path, capsys, value):
    code = cli(["merge", "base=/b", "experts=[/a]", f"out={tmp_path / 'o'}", f"overwrite={value}"])
    assert code == 2 and "overwrite must be true, false or force" in capsys.readouterr().err


def test_overwrite_true_replaces_only_a_mergelab_output(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="a directory mergelab did not write .*overwrite=force"):
        merge_to(project, overwrite=True)
    assert (project / "notes.txt").read_text() == "mine" and hidden_siblings(project) == []
    a_file = tmp_path / "file"
    a_file.write_text("data")
    with pytest.raises(CheckpointError, match="is not a directory"):
        merge_to(a_file, overwrite=True)
    assert a_file.read_text() == "data"
    merge_to(project, overwrite="force")
    assert not (project / "notes.txt").exists() and (project / "mergelab.json").is_file()
    merge(BASE, [EXPERT], "task_arithmetic", project, progress=False, scale=1.0, overwrite=True)
    assert torch.equal(load_file(project / "model.safetensors")["w"], torch.ones(4))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file", "project"]


def test_working_directory_is_not_wiped_by_overwrite_true(tmp_path, monkeypatch, capsys):
    (tmp_path / "keep.py").write_text("print('mine')")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="overwrite=true replaces only mergelab outputs"):
        merge_to(".", overwrite=True)
    assert (tmp_path / "keep.py").read_text() == "print('mine')"


def test_an_empty_directory_is_fine_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    merge_to(out)
    assert torch.equal(load_file(out / "model.safetensors")["w"], torch.full((4,), 0.5))
    with pytest.raises(CheckpointError, match="already exists; pass overwrite=true"):
        merge_to(out)


def test_output_moved_aside_by_a_killed_replacement_is_restored(tmp_path):
    out = tmp_path / "out"
    merge_to(out)
    old = load_file(out / "model.safetensors")["w"]
    pid, start = dead_process()
    # The state a kill between the two renames leaves: the old output aside, the new one still partial.
    aside = out.parent / f".out.old-{pid}-{start}-0123abcd"
    out.rename(aside)
    partial = out.parent / f".out.partial-{pid}-{start}-89abcdef"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert recover(out) == []
    assert torch.equal(load_file(out / "model.safetensors")["w"], old)
    assert hidden_siblings(out) == []


def test_stale_temporaries_are_removed_and_live_ones_named(tmp_path, capsys):
    out = tmp_path / "out"
    pid, start = dead_process()
    dead = tmp_path / f".out.partial-{pid}-{start}-00000001"
    reused = tmp_path / f".out.partial-{os.getpid()}-{process_start(os.getpid()) - 500}-00000002"
    legacy_dead = tmp_path / f".out.partial-{pid}-00000003"  # mergelab <= 0.1.0 recorded no start time
    alive = new_sibling_path(out, "partial")
    other_output = tmp_path / f".other.partial-{pid}-{start}-00000004"
    for path in (dead, reused, legacy_dead, alive, other_output):
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"x" * 10)
    merge_to(out)
    err = capsys.readouterr().err
    assert f"{alive} may belong to a running merge (process {os.getpid()}); left in place" in err
    assert hidden_siblings(out) == sorted([alive.name, other_output.name])


def test_legacy_old_copy_is_restored(tmp_path):
    out = tmp_path / "out"
    merge_to(out)
    pid, _ = dead_process()
    legacy = tmp_path / f".out.old-{pid}-0badcafe"  # main before this change: the old output one level down
    legacy.mkdir()
    out.rename(legacy / "out")
    recover(out)
    assert (out / "model.safetensors").is_file() and hidden_siblings(out) == []


@pytest.mark.parametrize("length", [250, 255])
def test_long_output_names_work(tmp_path, length):
    out = tmp_path / ("m" * length)
    merge_to(out)
    assert torch.equal(load_file(out / "model.safetensors")["w"], torch.full((4,), 0.5))
    assert len(os.fsencode(sibling_stem(out.name))) <= 180 and hidden_siblings(out) == []
    merge_to(out, overwrite=True)  # the replacement's siblings are named the same way
    assert sorted(path.name for path in tmp_path.iterdir()) == [out.name]


def test_too_long_output_name_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="is 300 bytes; names on this file system are limited to 255"):
        merge_to(tmp_path / ("m" * 300))
    assert list(tmp_path.iterdir()) == []


def test_long_names_share_no_stem():
    assert sibling_stem("a" * 300) != sibling_stem("a" * 299 + "b")
    assert sibling_stem("é" * 200).encode("utf-8")  # never cut inside a character


@pytest.mark.parametrize("out", ["", "   "])
def test_empty_out_is_an_error_in_python(tmp_path, out, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="out is empty"):
        merge_to(out)
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_not_a_path_is_an_error_in_python(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"out=\['a'\] must be a directory path"):
        merge_to(["a"])
    assert isinstance(merge_to(None), dict)  # None: the merged state dict, nothing written
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("override", "shown"), [("out=", "''"), ("out=''", "''"), ("out=null", "None")])
def test_empty_or_null_out_is_an_error_on_the_command_line(tmp_path, capsys, monkeypatch, override, shown):
    monkeypatch.chdir(tmp_path)
    code = cli(["merge", "base=/b", "experts=[/a]", override])
    assert code == 2 and f"out={shown} is not a path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_base_without_config_or_with_invalid_json_is_named(tmp_path, llama_family, capsys):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(llama_family["base"], base)
    out = tmp_path / "out"
    (base / "config.json").write_text('{"model_type": "llama",')
    code = cli(
        ["merge", f"base={base}", f"experts=[{llama_family['experts'][2]}]", f"out={out}", "progress=false"]
    )
    assert code == 2 and f"{base / 'config.json'}: not valid JSON" in capsys.readouterr().err
    (base / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json: not a JSON object"):
        merge(base, [llama_family["experts"][2]], "average", out, progress=False)
    (base / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing; the base model directory needs"):
        merge(base, [llama_family["experts"][2]], "average", out, progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["base"]


def test_a_json_tokenizer_file_that_does_not_parse_is_named(tmp_path, llama_family):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(llama_family["base"], base)
    (base / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer_config.json: not valid JSON"):
        merge(base, [llama_family["experts"][2]], "average", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_sigterm_handler_is_restored_after_a_merge(tmp_path):
    import signal

    merge_to(tmp_path / "out")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert (
        json.loads((tmp_path / "out" / "mergelab.json").read_text())["merge"]["method"] == "task_arithmetic"
    )
