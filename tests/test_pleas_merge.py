"""PLeaS through the public entry points on the micro zoo: `mergelab.merge`, `mergelab merge`, `mergelab run`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from mergelab import zoo
from mergelab.api.cli import main as merge_main
from mergelab.api.merging import load_merged_model, merge
from mergelab.methods import MergeConfigError, get_method
from tests.zoo_fixture import micro_run_overrides

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def two_bases(micro_zoo):
    """Two micro experts fine-tuned from different bases (init 0 and init 1) and their data specs."""
    zoo.build("micro", device="cpu", progress=False, init=1)
    first, second = zoo.load_suite().held_in_categories[:2]
    return {
        "base": str(zoo.model_path("micro", "base", "base")),
        "experts": [
            str(zoo.model_path("micro", "base", "expert", first)),
            str(zoo.model_path("micro", "base", "expert", second, init=1)),
        ],
        "data": [f"zoo:{first}", f"zoo:{second}"],
    }


def test_merge_writes_a_wider_checkpoint_that_loads(two_bases, tmp_path):
    out = merge(
        two_bases["base"],
        two_bases["experts"],
        "pleas",
        tmp_path / "merged",
        data=two_bases["data"],
        progress=False,
        device="cpu",
        budget=1.5,
        n_examples=24,
    )
    config = json.loads((out / "config.json").read_text())
    units = AutoModelForCausalLM.from_pretrained(two_bases["base"]).config.intermediate_size
    assert config["intermediate_size"] == units + units // 2
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.model.layers[0].mlp.down_proj.weight.shape[1] == units + units // 2
    assert (out / "tokenizer.json").is_file()


def test_state_dict_result_loads_with_the_widened_config(two_bases):
    state_dict = merge(
        two_bases["base"],
        two_bases["experts"],
        "pleas",
        data=two_bases["data"],
        progress=False,
        device="cpu",
        budget=1.25,
        n_examples=24,
    )
    model = load_merged_model(two_bases["base"], state_dict)
    torch.testing.assert_close(
        model.model.layers[0].mlp.up_proj.weight, state_dict["model.layers.0.mlp.up_proj.weight"]
    )


def test_merge_is_deterministic_and_needs_data(two_bases):
    options = {"progress": False, "device": "cpu", "n_examples": 16, "data": two_bases["data"]}
    first = merge(two_bases["base"], two_bases["experts"], "pleas", **options)
    second = merge(two_bases["base"], two_bases["experts"], "pleas", **options)
    assert all(torch.equal(first[name], second[name]) for name in first)
    with pytest.raises(MergeConfigError, match="give one data spec per expert"):
        merge(two_bases["base"], two_bases["experts"], "pleas", progress=False, n_examples=16)


def test_cli_merge(two_bases, tmp_path):
    experts = ",".join(two_bases["experts"])
    data = ",".join(two_bases["data"])
    code = merge_main(
        [
            "merge=pleas",
            f"base={two_bases['base']}",
            f"experts=[{experts}]",
            f"data=[{data}]",
            f"out={tmp_path / 'cli'}",
            "merge.n_examples=16",
            "merge.fit=none",
            "device=cpu",
            "progress=false",
        ]
    )
    assert code == 0 and (tmp_path / "cli" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("hparams", "message"),
    [
        ({"budget": 0.5}, "budget=0.5 must be a width >= 1"),
        ({"budget": []}, r"budget=\[\] must be a width >= 1"),
        ({"ridge": -1.0}, "ridge=-1.0 must be >= 0"),
        ({"fit": "sgd"}, "fit='sgd' is not one of least_squares, adam, none"),
        ({"n_examples": 0}, "n_examples=0 must be >= 1"),
    ],
)
def test_bad_hyperparameters_name_the_option(hparams, message):
    with pytest.raises(MergeConfigError, match=message):
        get_method("pleas", **hparams)


def test_run_merges_experts_from_two_bases_into_a_wider_model(two_bases, tmp_path):
    from mergelab.experiment import runner
    from mergelab.experiment.config import validate
    from mergelab.experiment.sweep import compose

    config = compose(
        micro_run_overrides(
            tmp_path, "merge=pleas", "experts.init=different", "merge.budget=1.5", "merge.n_examples=16"
        )
    )
    spec = validate(config)
    models = runner.locate_models(spec)
    assert [("/init1/" in path) for path in models.experts.values()] == [False, True]
    rows = runner.run_one(config)
    base = AutoModelForCausalLM.from_pretrained(models.base)
    mlp_weights = 3 * base.config.hidden_size * base.config.num_hidden_layers
    extra = mlp_weights * (base.config.intermediate_size // 2)
    assert set(rows["parameters"]) == {sum(p.numel() for p in base.parameters()) + extra}
    assert set(rows["method"]) == {"pleas"} and rows["value"].notna().all()


def test_experts_init_is_part_of_the_run_identity_and_checked(micro_zoo, tmp_path):
    from mergelab.experiment.config import ConfigError, validate
    from mergelab.experiment.sweep import compose

    shared = validate(compose(micro_run_overrides(tmp_path)))
    different = validate(compose(micro_run_overrides(tmp_path, "experts.init=different")))
    assert shared.config_hash != different.config_hash
    with pytest.raises(ConfigError, match="experts.init: 'different' needs experts.base_kind=base"):
        validate(compose(micro_run_overrides(tmp_path, "experts.init=different", "experts.base_kind=it")))
    with pytest.raises(
        ConfigError, match="experts.init: 'sometimes' is not allowed; allowed: shared, different"
    ):
        validate(compose(micro_run_overrides(tmp_path, "experts.init=sometimes")))


def test_a_nan_in_an_expert_is_refused_before_anything_is_written(two_bases, tmp_path):
    """PLeaS checks its inputs like the tensor-wise methods: the error names the expert and the tensor, and
    no checkpoint (partial or final) is left; allow_nonfinite, which cannot align NaN activations, is refused."""
    from safetensors.torch import load_file, save_file

    from mergelab.engine.finite import NonFiniteError

    poisoned = tmp_path / "poisoned"
    shutil.copytree(two_bases["experts"][1], poisoned)
    tensors = load_file(poisoned / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(tensors, poisoned / "model.safetensors", metadata={"format": "pt"})
    experts = [two_bases["experts"][0], str(poisoned)]
    options = {"data": two_bases["data"], "progress": False, "device": "cpu", "n_examples": 16}
    message = r"expert 1 \(.*poisoned\): tensor 'model.layers.0.mlp.up_proj.weight' has 1 non-finite"
    with pytest.raises(NonFiniteError, match=message):
        merge(two_bases["base"], experts, "pleas", tmp_path / "merged", **options)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["poisoned"]
    with pytest.raises(
        MergeConfigError, match="needs finite weights; allow_nonfinite applies to the tensor-wise"
    ):
        merge(two_bases["base"], experts, "pleas", allow_nonfinite=True, **options)
