"""Bad input gets one clear error naming the fault, a non-zero exit, and leaves no output behind."""

from __future__ import annotations

import errno
import shutil

import pytest
import torch
from safetensors.torch import save_file

from mergelab.cli import main as cli
from mergelab.engine.safetensors_io import SafetensorsWriter
from mergelab.methods import ALIASES, METHODS
from tests.conftest import save_family, tiny_llama


@pytest.fixture
def family(tmp_path, llama_family):
    """A private copy of the tiny Llama family that a test may damage."""
    root = tmp_path / "models"
    shutil.copytree(llama_family["base"].parent, root)
    return {
        "base": root / "base",
        "experts": [root / p.name for p in llama_family["experts"]],
        "root": tmp_path,
    }


def run_merge(capsys, base, experts, out, *extra: str) -> tuple[int, str]:
    expert_list = ",".join(str(path) for path in experts)
    code = cli(["merge", f"base={base}", f"experts=[{expert_list}]", f"out={out}", "progress=false", *extra])
    return code, capsys.readouterr().err


def assert_no_output(out):
    assert not out.exists()
    assert not [path for path in out.parent.iterdir() if path.name.startswith(f".{out.name}.")]


def test_missing_path(family, capsys):
    out = family["root"] / "out"
    code, err = run_merge(capsys, family["base"], [family["root"] / "nope"], out)
    assert code == 2 and "path does not exist" in err and "nope" in err
    assert_no_output(out)


def test_directory_without_weights(family, capsys):
    empty = family["root"] / "empty"
    empty.mkdir()
    out = family["root"] / "out"
    code, err = run_merge(capsys, family["base"], [empty], out)
    assert code == 2 and f"{empty}: no model weights found" in err
    assert_no_output(out)


def test_expert_missing_or_extra_tensor(tmp_path, capsys):
    base = {"a.weight": torch.zeros(2, 2), "b.weight": torch.zeros(2)}
    save_file(base, tmp_path / "base.safetensors")
    save_file({"a.weight": torch.ones(2, 2)}, tmp_path / "missing.safetensors")
    save_file({**base, "c.weight": torch.ones(3)}, tmp_path / "extra.safetensors")
    out = tmp_path / "out"
    code, err = run_merge(capsys, tmp_path / "base.safetensors", [tmp_path / "missing.safetensors"], out)
    assert code == 2 and "is missing tensor(s) the base has: 'b.weight'" in err
    code, err = run_merge(capsys, tmp_path / "base.safetensors", [tmp_path / "extra.safetensors"], out)
    assert code == 2 and "has tensor(s) the base lacks: 'c.weight'" in err
    assert_no_output(out)


def test_shape_and_vocabulary_mismatch(tmp_path, capsys):
    save_family(tmp_path / "a", tiny_llama(vocab_size=96), 0)
    save_family(tmp_path / "b", tiny_llama(vocab_size=100), 0)
    out = tmp_path / "out"
    code, err = run_merge(capsys, tmp_path / "a" / "base", [tmp_path / "b" / "base"], out)
    assert code == 2
    assert "shape mismatch for tensor 'lm_head.weight': base [96, 32] vs expert [100, 32]" in err
    assert "vocabulary size mismatch: 96 vs 100 tokens" in err
    save_file({"w": torch.zeros(2, 3)}, tmp_path / "x.safetensors")
    save_file({"w": torch.zeros(3, 3)}, tmp_path / "y.safetensors")
    code, err = run_merge(capsys, tmp_path / "x.safetensors", [tmp_path / "y.safetensors"], out)
    assert (
        "shape mismatch for tensor 'w': base [2, 3] vs expert [3, 3]" in err and "vocabulary size" not in err
    )
    assert_no_output(out)


def test_non_float_tensors_are_copied_from_base(tmp_path):
    from mergelab.api.merging import merge

    base = {"w": torch.zeros(3), "ids": torch.arange(3)}
    expert = {"w": torch.ones(3), "ids": torch.tensor([7, 8, 9])}
    merged = merge(base, [expert], "task_arithmetic", scale=1.0, progress=False)
    assert torch.equal(merged["ids"], torch.arange(3)) and torch.equal(merged["w"], torch.ones(3))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("merge=tie",),
            "Could not find 'merge/tie' Available options in 'merge': "
            + " ".join(sorted([*METHODS, *ALIASES])),
        ),
        (("merge.densty=0.2",), "unknown hyperparameter(s) ['densty'] for method 'ties'; valid: ['density',"),
        (("merge.density=0",), "density=0 must be in (0, 1]"),
        (("merge.density=1.2",), "density=1.2 must be in (0, 1]"),
        (("devices=cpu",), "unknown option 'devices'; valid:"),
        (("device=tpu",), "device='tpu' is not one of ['auto', 'cpu', 'cuda']"),
    ],
)
def test_bad_options_are_named(family, capsys, args, message):
    out = family["root"] / "out"
    code, err = run_merge(capsys, family["base"], family["experts"][:1], out, *args)
    assert code == 2 and message in err
    assert_no_output(out)


def test_no_experts(family, capsys):
    out = family["root"] / "out"
    code = cli(["merge", f"base={family['base']}", "experts=[]", f"out={out}", "progress=false"])
    assert code == 2 and "at least one expert" in capsys.readouterr().err
    assert_no_output(out)


@pytest.mark.parametrize("damage", ["truncate", "corrupt_header"])
def test_truncated_or_corrupted_safetensors(family, capsys, damage):
    weights = family["experts"][2] / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        data[: len(data) // 2] if damage == "truncate" else data[:8] + b"{garbage" + data[16:]
    )
    out = family["root"] / "out"
    code, err = run_merge(capsys, family["base"], family["experts"][2:], out)
    assert code == 2 and str(weights) in err
    assert ("truncated" in err) if damage == "truncate" else ("corrupted" in err)
    assert_no_output(out)


def test_output_exists_is_refused(family, capsys):
    out = family["root"] / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_merge(capsys, family["base"], family["experts"][:1], out)
    assert code == 2 and "already exists; pass overwrite=true" in err
    assert (out / "keep.txt").read_text() == "mine"


def test_output_not_writable(family, capsys):
    blocker = family["root"] / "file"
    blocker.write_text("not a directory")
    out = blocker / "out"
    code, err = run_merge(capsys, family["base"], family["experts"][:1], out)
    assert code == 2 and f"output {out} is not writable" in err


def test_disk_full_while_writing_leaves_nothing(family, capsys, monkeypatch):
    calls = {"count": 0}
    real_write = SafetensorsWriter.write

    def write_until_full(self, name, tensor):
        calls["count"] += 1
        if calls["count"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, name, tensor)

    monkeypatch.setattr(SafetensorsWriter, "write", write_until_full)
    out = family["root"] / "out"
    code, err = run_merge(capsys, family["base"], family["experts"], out)
    assert code == 2 and f"disk full while writing {out}" in err
    assert_no_output(out)


class FullDiskFile:
    """A file on a disk that fills up after `capacity` bytes: writes, flushes and close all fail then."""

    def __init__(self, handle, capacity: int) -> None:
        self.handle = handle
        self.capacity = capacity
        self.full = False

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self.capacity:
            self.full = True
            raise OSError(errno.ENOSPC, "No space left on device")
        self.capacity -= size
        return self.handle.write(data)

    def close(self) -> None:
        """Closing flushes the buffered tail, which fails again once the disk is full."""
        self.handle.close()
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_filling_up_mid_shard_leaves_nothing(family, capsys, monkeypatch):
    real_open = open

    def open_on_small_disk(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return FullDiskFile(handle, capacity=50_000) if "w" in mode else handle

    monkeypatch.setattr("mergelab.engine.safetensors_io.open", open_on_small_disk, raising=False)
    out = family["root"] / "out"
    code, err = run_merge(capsys, family["base"], family["experts"], out, "merge=average")
    assert code == 2 and f"disk full while writing {out}" in err
    assert_no_output(out)


def test_output_that_would_replace_an_input_is_refused(family, capsys):
    base_files = sorted(path.name for path in family["base"].iterdir())
    code, err = run_merge(capsys, family["base"], family["experts"][:1], family["base"], "overwrite=true")
    assert code == 2 and f"output {family['base']} would replace the input {family['base']}" in err
    assert sorted(path.name for path in family["base"].iterdir()) == base_files
    code, err = run_merge(capsys, family["base"], family["experts"][:1], family["root"], "overwrite=true")
    assert code == 2 and f"output {family['root']} would replace the input" in err


def test_weights_not_matching_the_experts_fail_before_writing(family, capsys):
    out = family["root"] / "out"
    code, err = run_merge(
        capsys, family["base"], family["experts"], out, "merge=average", "merge.weights=[1,2]"
    )
    assert code == 2 and "method 'average': weights has 2 entries for 3 experts" in err
    assert_no_output(out)


def test_unreachable_hub_id_is_named(family, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(family["root"])
    out = family["root"] / "out"
    code, err = run_merge(capsys, "no-such-org/no-such-model", family["experts"][:1], out)
    assert code == 2 and "'no-such-org/no-such-model' is not a local path and could not be fetched" in err
    assert_no_output(out)


def test_experts_must_be_a_list_in_python(family, tmp_path):
    from mergelab.api.merging import merge
    from mergelab.engine.checkpoint import CheckpointError

    with pytest.raises(
        CheckpointError, match="experts must be a list of paths, hub ids or state dicts, not str"
    ):
        merge(family["base"], str(family["experts"][0]), "average", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
