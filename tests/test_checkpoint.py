"""Checkpoint I/O: the streaming safetensors reader and writer, model directory layouts, hub ids, shard plans."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mergelab.engine.checkpoint import CheckpointError, check_compatible, open_checkpoint, sidecar_files
from mergelab.engine.output import parse_size, plan_shards
from mergelab.engine.safetensors_io import PlannedTensor, SafetensorsReader, SafetensorsWriter
from tests.conftest import save_bin, tiny_llama


def mixed_tensors() -> dict[str, torch.Tensor]:
    """One tensor per dtype a checkpoint may hold, plus a scalar and an empty tensor."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(3, 5, generator=generator)
    return {
        "f32": values,
        "f16": values.half(),
        "bf16": values.bfloat16(),
        "f64": values.double(),
        "i64": torch.arange(7),
        "u8": torch.arange(4, dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def test_reader_returns_exactly_what_safetensors_stored(tmp_path):
    tensors = mixed_tensors()
    save_file(tensors, tmp_path / "x.safetensors")
    reader = SafetensorsReader(tmp_path / "x.safetensors")
    assert set(reader.entries) == set(tensors)
    for name, tensor in tensors.items():
        read = reader.get(name)
        assert read.dtype == tensor.dtype and read.shape == tensor.shape and torch.equal(read, tensor)
    reader.close()


def test_writer_output_is_valid_safetensors_and_checks_order(tmp_path):
    tensors = mixed_tensors()
    names = sorted(tensors)
    plan = [PlannedTensor(name, tensors[name].dtype, tuple(tensors[name].shape)) for name in names]
    writer = SafetensorsWriter(tmp_path / "out.safetensors", plan)
    with pytest.raises(ValueError, match="expected tensor"):
        writer.write(names[1], tensors[names[1]])
    for name in names:
        writer.write(name, tensors[name])
    assert writer.complete
    writer.close()
    loaded = load_file(tmp_path / "out.safetensors")
    assert all(torch.equal(loaded[name], tensors[name]) for name in names)
    with safe_open(tmp_path / "out.safetensors", "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    header_bytes = int.from_bytes((tmp_path / "out.safetensors").read_bytes()[:8], "little")
    assert header_bytes % 8 == 0


@pytest.mark.parametrize("layout", ["sharded_safetensors", "sharded_bin", "single_bin", "single_file"])
def test_model_directory_layouts_read_the_same_tensors(tmp_path, layout):
    model = tiny_llama(seed=1)
    expected = model.state_dict()
    if layout == "sharded_safetensors":
        model.save_pretrained(tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").exists()
    elif layout == "sharded_bin":
        save_bin(model, tmp_path, n_shards=3)
    elif layout == "single_bin":
        save_bin(model, tmp_path)
        torch.save({"learning_rate": 1e-3}, tmp_path / "training_args.bin")  # a Trainer artifact, not weights
    else:
        model.save_pretrained(tmp_path)
    reference = tmp_path / "model.safetensors" if layout == "single_file" else tmp_path
    checkpoint = open_checkpoint(reference, "expert")
    infos = checkpoint.infos()
    assert set(infos) == set(expected)
    for name, tensor in expected.items():
        assert infos[name].shape == tuple(tensor.shape)
        assert torch.equal(checkpoint.get(name), tensor)
    assert checkpoint.directory == tmp_path
    checkpoint.close()


def test_legacy_bin_and_non_state_dict_bin(tmp_path):
    tensors = {"w": torch.arange(6.0).view(2, 3), "ids": torch.arange(3)}
    torch.save(tensors, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    checkpoint = open_checkpoint(tmp_path, "base")
    assert all(torch.equal(checkpoint.get(name), tensor) for name, tensor in tensors.items())
    torch.save({"w": torch.zeros(2), "step": 3}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: not a state dict of tensors"):
        open_checkpoint(tmp_path, "base")


def test_tensor_stored_in_two_shards_is_an_error(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "a.safetensors")
    save_file({"w": torch.ones(2)}, tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="tensor 'w' is stored twice"):
        open_checkpoint(tmp_path, "base")


def test_corrupted_index_and_missing_shard_are_named(tmp_path):
    model = tiny_llama(seed=2)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / shard).unlink()
    with pytest.raises(CheckpointError, match=f"shard file\\(s\\) missing: .*{shard}"):
        open_checkpoint(tmp_path, "base")
    index_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: corrupted index"):
        open_checkpoint(tmp_path, "base")


def test_hub_id_offline_is_a_clear_error_and_a_local_directory_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        CheckpointError, match="'no-such-org/no-such-model' is not a local path and could not"
    ):
        open_checkpoint("no-such-org/no-such-model", "base")

    def no_download(*args, **kwargs):
        raise AssertionError("a local directory must not be looked up on the hub")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_download)
    save_file({"w": torch.ones(2)}, (tmp_path / "org").mkdir() or tmp_path / "org" / "model.safetensors")
    (tmp_path / "org" / "local").mkdir()
    save_file({"w": torch.ones(2)}, tmp_path / "org" / "local" / "model.safetensors")
    checkpoint = open_checkpoint("org/local", "base")
    assert torch.equal(checkpoint.get("w"), torch.ones(2))


def test_float_versus_integer_dtype_mismatch_is_named():
    base = open_checkpoint({"ids": torch.arange(3)}, "base")
    expert = open_checkpoint({"ids": torch.zeros(3)}, "expert 0")
    with pytest.raises(
        CheckpointError, match="expert 0: tensor 'ids' is torch.float32 but the base's is torch.int64"
    ):
        check_compatible(base, [expert])


def test_sidecar_files_are_config_generation_config_and_tokenizer(tmp_path):
    wanted = [
        "config.json",
        "generation_config.json",
        "merges.txt",
        "special_tokens_map.json",
        "spiece.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    for name in [*wanted, "README.md", "model.safetensors", "training_args.bin", "optimizer.pt"]:
        (tmp_path / name).write_text("{}" if name.endswith(".json") else "x")
    assert [path.name for path in sidecar_files(tmp_path)] == wanted
    assert sidecar_files(None) == []


def test_parse_size_and_shard_plan():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5MB") == 1_500_000
    assert parse_size(1234) == 1234
    with pytest.raises(CheckpointError, match="max_shard_size='lots' is not a size"):
        parse_size("lots")
    infos = open_checkpoint(
        {"a": torch.zeros(10), "b": torch.zeros(10), "c": torch.zeros(30), "d": torch.zeros(1)}, "base"
    ).infos()
    shards = plan_shards(sorted(infos), infos, max_shard_bytes=80)  # a, b: 40 bytes each; c: 120 bytes
    assert [[tensor.name for tensor in shard] for shard in shards] == [["a", "b"], ["c"], ["d"]]
