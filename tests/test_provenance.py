"""Every merged directory says how it was made: `mergelab.json` (fixed schema) and a README.md model card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mergelab.api.merging import merge
from mergelab.cli import main as cli
from mergelab.engine import provenance
from mergelab.engine.checkpoint import CheckpointError
from mergelab.experiment import results
from tests.test_engine import file_digests

SCHEMA_KEYS = {"mergelab_version", "git_commit", "merge"}
MERGE_KEYS = {"method", "base", "experts", "hparams", "options"}


def read_record(out):
    return json.loads((out / "mergelab.json").read_text())


def front_matter(out) -> dict:
    text = (out / "README.md").read_text()
    match = re.fullmatch(r"---\n(.*?)\n---\n(.*)", text, flags=re.DOTALL)
    assert match, "the card starts with YAML front matter"
    return yaml.safe_load(match.group(1))


def test_cli_output_records_exactly_what_was_merged(llama_family, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(llama_family["base"].parent)  # relative inputs are recorded as absolute paths
    out = tmp_path / "merged"
    code = cli(
        ["merge", "merge=ties", "base=base", "experts=[expert0,expert2]", f"out={out}", "progress=false"]
        + ["merge.density=0.4", "merge.trim_scope=tensor", "device=cpu", "max_shard_size=20KB"]
    )
    assert code == 0, capsys.readouterr().err
    record = read_record(out)
    assert set(record) == SCHEMA_KEYS and set(record["merge"]) == MERGE_KEYS
    root = llama_family["base"].parent
    assert record["merge"]["method"] == "ties"
    assert record["merge"]["base"] == str(root / "base")
    assert record["merge"]["experts"] == [str(root / "expert0"), str(root / "expert2")]
    # Every hyperparameter, resolved: the two given and conf/merge/ties.yaml's defaults for the rest.
    defaults = yaml.safe_load((Path(__file__).parents[1] / "conf/merge/ties.yaml").read_text())
    expected = {key: value for key, value in defaults.items() if key != "method"}
    expected.update(density=0.4, trim_scope="tensor")
    assert record["merge"]["hparams"] == expected
    assert record["merge"]["options"] == {
        "device": "cpu",
        "max_shard_size": "20KB",
        "dtype": "float32",
        "out_dtype": None,
        "tokenizer_source": "base",
        "chat_template": None,
    }
    assert record["git_commit"] == results.git_commit() and record["mergelab_version"] == "0.1.0"


def test_the_record_reproduces_the_merge_byte_for_byte(llama_family, tmp_path):
    out = tmp_path / "first"
    merge(llama_family["base"], llama_family["experts"], "dare", out, progress=False, density=0.3, seed=7)
    recorded = read_record(out)["merge"]
    again = tmp_path / "again"
    merge(
        recorded["base"],
        recorded["experts"],
        recorded["method"],
        again,
        progress=False,
        **recorded["options"],
        **recorded["hparams"],
    )
    assert file_digests(again) == file_digests(out)
    assert (again / "mergelab.json").read_bytes() == (out / "mergelab.json").read_bytes()
    assert (again / "README.md").read_bytes() == (out / "README.md").read_bytes()


def test_model_card_front_matter_names_base_method_hparams_experts_and_version(llama_family, tmp_path):
    out = tmp_path / "merged"
    merge(
        llama_family["base"], llama_family["experts"][:2], "task_arithmetic", out, progress=False, scale=0.7
    )
    card = front_matter(out)
    record = read_record(out)
    assert card["base_model"] == str(llama_family["base"])
    assert card["tags"] == ["merge", "mergelab"]
    assert card["merge_method"] == "task_arithmetic"
    assert card["merge_hparams"] == {"scale": 0.7, "weights": None}
    assert card["experts"] == [str(path) for path in llama_family["experts"][:2]]
    assert card["mergelab_version"] == record["mergelab_version"]
    assert card["mergelab_commit"] == record["git_commit"]
    body = (out / "README.md").read_text().split("---\n", 2)[2]
    assert "`task_arithmetic` (`scale=0.7`, `weights=null`)" in body and "2 expert(s)" in body


def test_state_dict_inputs_are_recorded_as_such(tmp_path):
    out = tmp_path / "merged"
    merge({"w": torch.zeros(2)}, [{"w": torch.ones(2)}], "average", out, progress=False, weights=[2.0])
    record = read_record(out)
    assert record["merge"]["base"] == "<state dict>" and record["merge"]["experts"] == ["<state dict>"]
    assert record["merge"]["hparams"] == {"weights": [2.0]}
    assert torch.equal(load_file(out / "model.safetensors")["w"], torch.ones(2))


def test_a_hub_id_is_recorded_as_given():
    assert provenance.input_name("no-such-org/no-such-model") == "no-such-org/no-such-model"


def test_data_specs_are_recorded_with_the_options():
    record = provenance.merge_record("fisher", {}, {}, [{}], {"device": "auto", "data": ("zoo:color",)})
    assert record["merge"]["options"]["data"] == ["zoo:color"]


def test_git_commit_lives_below_the_experiment_layer():
    assert results.git_commit is provenance.git_commit
    commit = provenance.git_commit()
    assert commit == "unknown" or len(commit.split("-")[0]) == 40


def test_a_hyperparameter_that_cannot_be_recorded_is_refused_before_any_work(tmp_path):
    with pytest.raises(CheckpointError, match="must be numbers, strings, booleans or lists"):
        provenance.merge_record("average", {"weights": object()}, {}, [{}], {})
