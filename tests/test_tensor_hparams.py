"""Per-tensor hyperparameters (`tensor_hparams`), one trim density per expert, and merging again from a
`mergelab.json` written by hand to the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mergelab
from mergelab.api.reproduce import ProvenanceError, read_provenance
from mergelab.cli import main as cli
from mergelab.engine.blockwise import merge_blockwise
from mergelab.engine.checkpoint import CheckpointError
from mergelab.methods import MergeConfigError, TensorContext, get_method

# --- one density per expert --------------------------------------------------------------------------------


def test_ties_trims_each_expert_to_its_own_density():
    base = torch.zeros(4)
    experts = [torch.tensor([4.0, -3.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, -8.0, 0.5])]
    ties = get_method("ties", density=[0.5, 0.25], trim_scope="tensor")
    merged = ties.merge(base, experts, TensorContext(name="w"))
    # expert 0 keeps its 2 largest [4, -3, 0, 0], expert 1 its largest [0, 0, -8, 0]; votes [4, -3, -8, 0]
    # elect [+, -, -, majority of the elected signs = -]; the last entry has no agreeing value: 0
    assert merged.tolist() == [4.0, -3.0, -8.0, 0.0]


def test_per_expert_density_slice_by_slice_equals_the_whole_tensor():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(1000, generator=generator)
    experts = [base + torch.randn(1000, generator=generator) for _ in range(3)]
    ties = get_method("ties", density=[0.3, 0.6, 0.05], trim_scope="tensor")
    whole = ties.merge(base, [expert.clone() for expert in experts], TensorContext(name="w"))
    sliced = merge_blockwise(
        ties, base, experts, TensorContext(name="w"), torch.device("cpu"), block_entries=128
    )
    assert torch.equal(sliced, whole)
    kept = [
        (ties.trimmed_task_vectors(base, experts, TensorContext(name="w"))[i] != 0).sum() for i in range(3)
    ]
    assert [int(count) for count in kept] == [300, 600, 50]


@pytest.mark.parametrize(
    ("hparams", "message"),
    [
        ({"density": [0.5, 0.5]}, "one density per expert needs trim_scope='tensor'"),
        ({"density": [0.5, 0.5, 0.5], "trim_scope": "tensor"}, "density has 3 entries for 2 experts"),
        ({"density": [0.5, 1.5], "trim_scope": "tensor"}, "must be in (0, 1]"),
    ],
)
def test_bad_per_expert_densities_are_named(hparams, message):
    base = {"w": torch.zeros(4)}
    experts = [{"w": torch.ones(4)}, {"w": -torch.ones(4)}]
    with pytest.raises(MergeConfigError, match=None) as error:
        mergelab.merge(base, experts, "ties", progress=False, **hparams)
    assert message in str(error.value)


# --- tensor_hparams ----------------------------------------------------------------------------------------

BASE = {"w": torch.zeros(3), "v": torch.zeros(2), "ids": torch.arange(2)}
EXPERTS = [
    {"w": torch.tensor([1.0, 2.0, 3.0]), "v": torch.tensor([1.0, 1.0]), "ids": torch.arange(2)},
    {"w": torch.tensor([3.0, 2.0, 1.0]), "v": torch.tensor([-1.0, 3.0]), "ids": torch.arange(2)},
]


def test_named_tensors_merge_with_their_own_hyperparameters():
    merged = mergelab.merge(
        BASE, EXPERTS, "task_arithmetic", scale=1.0, tensor_hparams={"v": {"scale": 0.5}}, progress=False
    )
    assert merged["w"].tolist() == [4.0, 4.0, 4.0]  # scale 1: the sum of the task vectors
    assert merged["v"].tolist() == [0.0, 2.0]  # scale 0.5 of [0, 4]
    assert torch.equal(merged["ids"], BASE["ids"])


@pytest.mark.parametrize(
    ("method", "hparams", "tensor_hparams", "error", "message"),
    [
        ("task_arithmetic", {}, {"x": {"scale": 1.0}}, CheckpointError, "names tensor 'x', which the base"),
        ("task_arithmetic", {}, {"ids": {"scale": 1.0}}, CheckpointError, "only float tensors are merged"),
        (
            "ties",
            {"trim_scope": "tensor"},
            {"v": {"density": 2.0}},
            MergeConfigError,
            "tensor 'v': method 'ties'",
        ),
        ("task_arithmetic", {}, {"v": {"weights": [1.0]}}, MergeConfigError, "weights has 1 entries for 2"),
        ("ties", {}, {"v": {"scale": 2.0}}, MergeConfigError, "trims over the whole model"),
    ],
)
def test_bad_tensor_hparams_are_named(method, hparams, tensor_hparams, error, message):
    with pytest.raises(error, match=None) as raised:
        mergelab.merge(BASE, EXPERTS, method, tensor_hparams=tensor_hparams, progress=False, **hparams)
    assert message in str(raised.value)


# --- mergelab.json -----------------------------------------------------------------------------------------


def weight_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("model*.safetensors*"))}


def provenance(base, experts, method: str, hparams: dict, options: dict) -> dict:
    """A mergelab.json by hand, to the schema every helper writes."""
    return {
        "mergelab_version": mergelab.__version__,
        "git_commit": "0" * 40,
        "merge": {
            "method": method,
            "base": str(Path(base).resolve()),
            "experts": [str(Path(expert).resolve()) for expert in experts],
            "hparams": hparams,
            "options": options,
        },
    }


def test_a_mergelab_json_merges_again_byte_for_byte(llama_family, tmp_path):
    base, experts = llama_family["base"], llama_family["experts"]
    hparams = {
        "density": 0.5,
        "scale": 1.0,
        "trim_scope": "tensor",
        "sign": "sum",
        "elect": True,
        "agg": "mean",
        "weights": [1.0, 0.5, 2.0],
    }
    first = tmp_path / "first"
    mergelab.merge(
        base, experts, "ties", out=first, max_shard_size="20KB", device="cpu", progress=False, **hparams
    )
    record = tmp_path / "record"
    record.mkdir()
    options = {"device": "cpu", "max_shard_size": "20KB"}
    (record / "mergelab.json").write_text(json.dumps(provenance(base, experts, "ties", hparams, options)))
    assert cli(["merge", f"config={record}", f"out={tmp_path / 'again'}", "progress=false"]) == 0
    assert len(weight_files(first)) > 2  # sharded, as recorded
    assert weight_files(tmp_path / "again") == weight_files(first)


def test_a_mergelab_json_carries_per_tensor_hyperparameters(llama_family, tmp_path):
    base, experts = llama_family["base"], llama_family["experts"][:2]
    tensor_hparams = {"model.layers.0.mlp.up_proj.weight": {"scale": 0.25}}
    direct = mergelab.merge(
        base, experts, "task_arithmetic", scale=1.0, tensor_hparams=tensor_hparams, progress=False
    )
    hparams = {"scale": 1.0, "weights": None, "tensor_hparams": tensor_hparams}
    path = tmp_path / "mergelab.json"
    path.write_text(json.dumps(provenance(base, experts, "task_arithmetic", hparams, {"device": "cpu"})))
    again = mergelab.merge(**read_provenance(path), progress=False)
    assert sorted(again) == sorted(direct) and all(torch.equal(again[n], direct[n]) for n in direct)
    plain = mergelab.merge(base, experts, "task_arithmetic", scale=1.0, progress=False)
    assert not torch.equal(
        plain["model.layers.0.mlp.up_proj.weight"], direct["model.layers.0.mlp.up_proj.weight"]
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["merge"].update(base="<state dict>"), "in-memory state dict as input"),
        (
            lambda r: r["merge"]["options"].update(colour="red"),
            "merge.options.colour is not a recorded option",
        ),
        (lambda r: r["merge"].pop("hparams"), "merge.hparams is missing"),
        (lambda r: r.pop("mergelab_version"), "not a mergelab.json"),
    ],
)
def test_a_mergelab_json_that_cannot_be_rerun_is_named(tmp_path, edit, message):
    record = provenance("/m/base", ["/m/a"], "average", {"weights": None}, {"device": "cpu"})
    edit(record)
    path = tmp_path / "mergelab.json"
    path.write_text(json.dumps(record))
    with pytest.raises(ProvenanceError, match=None) as error:
        read_provenance(path)
    assert message in str(error.value)


def test_a_mergelab_json_fixes_the_recorded_options(tmp_path, capsys):
    path = tmp_path / "mergelab.json"
    path.write_text(
        json.dumps(provenance("/m/base", ["/m/a"], "average", {"weights": None}, {"device": "cpu"}))
    )
    assert cli(["merge", f"config={path}", f"out={tmp_path / 'o'}", "device=cuda"]) == 2
    assert "the file fixes device (as recorded)" in capsys.readouterr().err


def test_per_expert_densities_take_the_reference_path_under_the_fused_kernels():
    generator = torch.Generator().manual_seed(1)
    base = {"w": torch.randn(64, 32, generator=generator)}
    experts = [{"w": base["w"] + torch.randn(64, 32, generator=generator)} for _ in range(2)]
    merges = {
        kernel: mergelab.merge(
            base, experts, "ties", kernel=kernel, density=[0.3, 0.6], trim_scope="tensor", progress=False
        )["w"]
        for kernel in ("fused", "reference")
    }
    expected = get_method("ties", density=[0.3, 0.6], trim_scope="tensor").merge(
        base["w"], [expert["w"] for expert in experts], TensorContext(name="w")
    )
    assert torch.equal(merges["fused"], expected) and torch.equal(merges["reference"], expected)
