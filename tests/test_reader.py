"""The checkpoint reader refuses what the reference `safetensors` library refuses, and more that is malformed:
every bad file or index ends in `CheckpointError` naming the file (issue 16, parts 5 and 6)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from mergelab.api.merging import merge
from mergelab.engine.checkpoint import CheckpointError, open_checkpoint

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TENSORS = {
    "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
    "b": torch.tensor([1, -2, 3], dtype=torch.int64),
    "c": torch.tensor([0.5, 1.5], dtype=torch.bfloat16),
}


def build(header: dict, data: bytes) -> bytes:
    """A safetensors file from a header dict and a data section, laid out as the format says."""
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def valid_file(tmp_path) -> bytes:
    save_file(TENSORS, tmp_path / "valid.safetensors")
    return (tmp_path / "valid.safetensors").read_bytes()


def split(blob: bytes) -> tuple[dict, bytes]:
    size = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8 : 8 + size]), blob[8 + size :]


def read_all_with_mergelab(path) -> dict[str, torch.Tensor]:
    """Every tensor through mergelab's reader; only `CheckpointError` may escape."""
    checkpoint = open_checkpoint(path, "expert")
    try:
        return {name: checkpoint.get(name).clone() for name in checkpoint.infos()}
    finally:
        checkpoint.close()


def read_all_with_reference(path) -> dict[str, torch.Tensor] | None:
    """Every tensor through the reference library, or None when it refuses the file."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception:  # the reference raises SafetensorError, OSError, ValueError, ...
        return None


def check_against_reference(path) -> str:
    """mergelab accepts a file only when the reference does, and then reads the same values."""
    reference = read_all_with_reference(path)
    try:
        ours = read_all_with_mergelab(path)
    except CheckpointError as error:
        assert str(path) in str(error)
        return "refused"
    assert reference is not None, f"mergelab accepted a file the reference refuses: {path.read_bytes()[:200]}"
    assert ours.keys() == reference.keys()
    for name, tensor in ours.items():  # compared as bytes: reinterpreted bits may be NaN
        other = reference[name]
        assert tensor.dtype == other.dtype and tensor.shape == other.shape, name
        assert torch.equal(tensor.reshape(-1).view(torch.uint8), other.reshape(-1).view(torch.uint8)), name
    return "accepted"


def header_case(tmp_path, mutate) -> str:
    header, data = split(valid_file(tmp_path))
    mutate(header)
    (tmp_path / "bad.safetensors").write_bytes(build(header, data))
    return check_against_reference(tmp_path / "bad.safetensors")


@pytest.mark.parametrize(
    ("name", "mutate", "message"),
    [
        ("out of bounds", lambda h: h["c"].update(data_offsets=[76, 80]), "leaves a gap"),
        ("duplicate field", None, "appears twice"),
        ("bad dtype", lambda h: h["a"].update(dtype="F31"), "unknown or unsupported dtype 'F31'"),
        ("shape vs bytes", lambda h: h["a"].update(shape=[3, 3]), "bad size"),
        ("negative dim", lambda h: h["a"].update(shape=[-2, -3]), "not a list of non-negative integers"),
        ("float dim", lambda h: h["a"].update(shape=[2.0, 3]), "not a list of non-negative integers"),
        ("string offsets", lambda h: h["a"].update(data_offsets=["0", "24"]), "two non-negative integers"),
        ("reversed offsets", lambda h: h["a"].update(data_offsets=[24, 0]), "end before they begin"),
        ("missing key", lambda h: h["a"].pop("dtype"), "needs dtype, shape and data_offsets"),
        ("metadata not strings", lambda h: h.update(__metadata__={"format": 1}), "__metadata__"),
    ],
)
def test_malformed_headers_are_refused_like_the_reference(tmp_path, name, mutate, message):
    header, data = split(valid_file(tmp_path))
    path = tmp_path / "bad.safetensors"
    if mutate is None:  # the same field twice in one entry: JSON allows it, a reader cannot know which
        text = json.dumps(header).replace('"dtype": "F32"', '"dtype": "F32", "dtype": "I32"', 1)
        encoded = text.encode()
        path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    else:
        mutate(header)
        path.write_bytes(build(header, data))
    assert read_all_with_reference(path) is None, f"{name}: the reference refuses this file too"
    with pytest.raises(CheckpointError, match=message):
        read_all_with_mergelab(path)


def test_overlapping_tensors_are_refused(tmp_path):
    """Two tensors sharing bytes (the reference refuses them; main read both)."""
    data = torch.arange(4, dtype=torch.float32).numpy().tobytes()
    header = {
        "x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "y": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    }
    (tmp_path / "model.safetensors").write_bytes(build(header, data))
    with pytest.raises(CheckpointError, match="tensor 'y' overlaps the tensor before it"):
        read_all_with_mergelab(tmp_path)


def test_trailing_bytes_and_non_object_headers_are_refused(tmp_path):
    blob = valid_file(tmp_path)
    (tmp_path / "trailing.safetensors").write_bytes(blob + b"\0" * 8)
    with pytest.raises(CheckpointError, match="8 bytes after the last tensor"):
        read_all_with_mergelab(tmp_path / "trailing.safetensors")
    for header in (b"[1, 2]", b'"text"', b"[" * 100_000, "{}".encode("utf-16")):
        path = tmp_path / "odd.safetensors"
        path.write_bytes(struct.pack("<Q", len(header)) + header)
        with pytest.raises(CheckpointError, match="corrupted safetensors header"):
            read_all_with_mergelab(path)


def shard_directory(tmp_path, weight_map) -> object:
    """A model directory with one good shard and an index whose weight_map is `weight_map`."""
    directory = tmp_path / "model"
    directory.mkdir()
    save_file({"w": torch.ones(2)}, directory / "model-00001-of-00001.safetensors")
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory


@pytest.mark.parametrize("target", ["../outside.safetensors", "ABSOLUTE", "sub/../../outside.safetensors"])
def test_index_entries_outside_the_model_directory_are_refused(tmp_path, target):
    save_file({"w": torch.full((2,), 9.0)}, tmp_path / "outside.safetensors")
    target = str(tmp_path / "outside.safetensors") if target == "ABSOLUTE" else target
    directory = shard_directory(tmp_path, {"w": target})
    with pytest.raises(CheckpointError, match="which is not a file name inside"):
        read_all_with_mergelab(directory)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ('{"weight_map": ["model-00001-of-00001.safetensors"]}', "must be a JSON object whose 'weight_map'"),
        ('[{"weight_map": {}}]', "must be a JSON object whose 'weight_map'"),
        ('{"weight_map": {}}', "must be a JSON object whose 'weight_map'"),
        ('{"metadata": {}}', "must be a JSON object whose 'weight_map'"),
        ('{"weight_map": {"w": 3}}', "is mapped to 3"),
        ('{"weight_map": {"w": null}}', "is mapped to None"),
        ("\xff\xfe not text", "corrupted index"),
    ],
)
def test_malformed_index_files_are_named(tmp_path, index, message):
    directory = shard_directory(tmp_path, {})
    (directory / "model.safetensors.index.json").write_bytes(index.encode("latin-1"))
    with pytest.raises(CheckpointError, match=f"model.safetensors.index.json: .*{message}"):
        read_all_with_mergelab(directory)


def test_an_index_naming_the_wrong_shard_is_named(tmp_path):
    directory = shard_directory(tmp_path, {"w": "model-00001-of-00001.safetensors", "v": "other.safetensors"})
    save_file({"u": torch.ones(1)}, directory / "other.safetensors")
    with pytest.raises(CheckpointError, match="tensor\\(s\\) not in the shard the index names: 'v'"):
        read_all_with_mergelab(directory)


def test_an_index_that_is_a_directory_is_named(tmp_path):
    directory = shard_directory(tmp_path, {})
    (directory / "model.safetensors.index.json").unlink()
    (directory / "model.safetensors.index.json").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: corrupted index"):
        read_all_with_mergelab(directory)


def test_a_shard_that_is_a_directory_is_named(tmp_path):
    directory = shard_directory(tmp_path, {"w": "model-00001-of-00001.safetensors", "v": "sub"})
    (directory / "sub").mkdir()
    with pytest.raises(CheckpointError, match="shard file\\(s\\) missing: .*sub"):
        read_all_with_mergelab(directory)


@pytest.mark.parametrize(
    ("method", "hparams"), [("task_arithmetic", {"scale": 0.5}), ("ties", {"density": 1.0})]
)
def test_state_dict_tensors_that_require_grad_are_detached(method, hparams):
    base = {"w": torch.zeros(3, requires_grad=True)}
    expert = {"w": torch.ones(3, requires_grad=True)}
    merged = merge(base, [expert], method, progress=False, **hparams)
    assert not merged["w"].requires_grad and merged["w"].grad_fn is None
    # task arithmetic: 0 + 0.5 * 1; TIES with one expert keeping everything: 0 + 1 * 1
    assert torch.equal(merged["w"], torch.full((3,), 0.5 if method == "task_arithmetic" else 1.0))


@pytest.mark.parametrize(
    ("expert", "message"),
    [
        ({"w": torch.empty(3, device="meta")}, "expert: tensor 'w' is on the meta device"),
        ({"w": [1.0, 2.0, 3.0]}, "expert: 'w' is a list, not a tensor"),
        ({"w": None}, "expert: 'w' is a NoneType, not a tensor"),
        ({3: torch.ones(3)}, "expert: state dict key 3 is a int, not a string"),
        ({"w": torch.ones(3).to_sparse()}, "expert: tensor 'w' is torch.sparse_coo"),
    ],
)
def test_state_dicts_with_values_that_cannot_be_merged_are_named(expert, message):
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
        open_checkpoint(expert, "expert")


# ---- fuzz: every damaged file or index ends in CheckpointError, or is read exactly as the reference reads it


@FUZZ
@given(cut=st.integers(min_value=0, max_value=400))
def test_fuzz_truncations(tmp_path, cut):
    blob = valid_file(tmp_path)
    (tmp_path / "cut.safetensors").write_bytes(blob[: min(cut, len(blob) - 1)])
    assert check_against_reference(tmp_path / "cut.safetensors") == "refused"


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4))
def test_fuzz_byte_flips(tmp_path, flips):
    blob = bytearray(valid_file(tmp_path))
    header_end = 8 + struct.unpack("<Q", blob[:8])[0]
    for position, mask in flips:
        blob[position % header_end] ^= mask  # the header and its length: where damage changes meaning
    (tmp_path / "flipped.safetensors").write_bytes(bytes(blob))
    check_against_reference(tmp_path / "flipped.safetensors")


JSON_NUMBERS = st.one_of(st.integers(-5, 80), st.floats(allow_nan=False, allow_infinity=False), st.booleans())
ODD_VALUES = st.one_of(JSON_NUMBERS, st.text(max_size=4), st.none(), st.lists(JSON_NUMBERS, max_size=3))


@FUZZ
@given(
    name=st.sampled_from(sorted(TENSORS)),
    field=st.sampled_from(["dtype", "shape", "data_offsets"]),
    value=st.one_of(
        ODD_VALUES,
        st.sampled_from(["F32", "F16", "BF16", "I64", "I8", "U8", "BOOL", "F64", "U16", "F4", "f32", ""]),
        st.lists(st.integers(0, 60), min_size=0, max_size=3),
    ),
)
def test_fuzz_header_fields(tmp_path, name, field, value):
    def mutate(header):
        header[name][field] = value

    header_case(tmp_path, mutate)


@FUZZ
@given(donor=st.sampled_from(sorted(TENSORS)), receiver=st.sampled_from(sorted(TENSORS)))
def test_fuzz_overlapping_offsets(tmp_path, donor, receiver):
    def mutate(header):
        header[receiver]["data_offsets"] = list(header[donor]["data_offsets"])
        header[receiver]["dtype"], header[receiver]["shape"] = header[donor]["dtype"], header[donor]["shape"]

    assert header_case(tmp_path, mutate) == ("accepted" if donor == receiver else "refused")


SHARD = "model-00001-of-00001.safetensors"
WEIGHT_MAP_VALUES = st.one_of(
    st.just(SHARD),
    st.sampled_from(["../outside.safetensors", "/etc/passwd", "", ".", "sub/../../x", "a\\..\\..\\x", "C:x"]),
    ODD_VALUES,
)
INDEXES = st.one_of(
    st.fixed_dictionaries({"weight_map": st.dictionaries(st.sampled_from(["w", "v"]), WEIGHT_MAP_VALUES)}),
    st.fixed_dictionaries({"weight_map": ODD_VALUES}),
    st.lists(ODD_VALUES, max_size=2),
    ODD_VALUES,
)


@FUZZ
@given(index=INDEXES)
def test_fuzz_index_files(tmp_path, index):
    save_file({"w": torch.full((2,), 9.0)}, tmp_path / "outside.safetensors")
    directory = tmp_path / "model"
    directory.mkdir(exist_ok=True)
    save_file({"w": torch.ones(2)}, directory / SHARD)
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    try:
        tensors = read_all_with_mergelab(directory)
    except CheckpointError as error:
        assert "model.safetensors.index.json" in str(error) or SHARD in str(error)
        return
    assert set(index["weight_map"].values()) == {SHARD}  # only the shard inside the directory is read
    assert torch.equal(tensors["w"], torch.ones(2))
