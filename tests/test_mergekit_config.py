"""mergekit YAML in: mergekit's documented example configs (arcee-ai/mergekit `examples/*.yml` and its
merge-method docs, adapted to tiny local models) give the same tensors as the equivalent mergelab merge;
settings are resolved per tensor as mergekit resolves them, recomputed here by hand; what mergelab cannot
merge the same way is refused naming the key."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

import mergelab
from mergelab.api.mergekit_config import (
    METHOD_SPECS,
    MergekitConfigError,
    MethodSpec,
    evaluate_setting,
    read_mergekit_config,
)
from mergelab.cli import main as cli
from mergelab.methods import METHODS, MergeWarning, TensorContext, get_method
from tests.conftest import fine_tune_like, state_dicts

N_LAYERS = 4


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    """A four-layer tiny Llama base and three experts fine-tuned from it (float32 safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    base = LlamaForCausalLM(config)
    root = tmp_path_factory.mktemp("mergekit_family")
    paths = {"base": root / "base"}
    base.save_pretrained(paths["base"])
    for index, name in enumerate(("a", "b", "c")):
        paths[name] = root / name
        fine_tune_like(base, seed=10 + index).save_pretrained(paths[name])
    return paths


def write_config(tmp_path: Path, text: str, family: dict[str, Path]) -> Path:
    """The YAML `text` with `{base}`, `{a}`, ... replaced by the family's absolute paths."""
    path = tmp_path / "merge.yml"
    path.write_text(text.format(**{name: str(value) for name, value in family.items()}))
    return path


def layer_t(name: str) -> float:
    """mergekit's interpolation point: layer i of L at i / (L - 1), tensors outside the layers at 0."""
    parts = name.split(".")
    if "layers" not in parts:
        return 0.0
    return int(parts[parts.index("layers") + 1]) / (N_LAYERS - 1)


def assert_same_tensors(merged: dict, expected: dict) -> None:
    assert sorted(merged) == sorted(expected)
    for name in expected:
        assert torch.equal(merged[name], expected[name]), name


# --- resolving settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "name", "t", "expected"),
    [
        (0.25, "x", 0.7, 0.25),
        ([0, 0.3, 0.7, 1], "x", 1 / 3, 0.3),  # t (L-1 = 3) lands on the 2nd value
        ([0, 0.3, 0.7, 1], "x", 0.5, 0.5),  # halfway between 0.3 and 0.7
        ([1, 0.7, 0.1], "x", 0.25, 0.85),  # scaled 0.5: halfway between 1 and 0.7
        ([1, 0.7, 0.1], "x", 1.0, 0.1),
        ([{"filter": "mlp", "value": 0.5}, {"value": 0}], "model.layers.0.mlp.up_proj.weight", 0, 0.5),
        ([{"filter": "mlp", "value": 0.5}, {"value": 0}], "model.layers.0.self_attn.q_proj.weight", 0, 0),
        ([{"filter": "self_attn", "value": [0, 1]}], "model.layers.2.self_attn.o_proj.weight", 0.25, 0.25),
        ([{"filter": "self_attn", "value": 1}], "model.norm.weight", 0, None),  # no match: the next scope
        ({"filter": "*", "value": 2}, "anything", 0, 2),
        (["1e-3", "3e-3"], "x", 0.5, 0.002),  # YAML keeps 1e-3 a string; mergekit reads a number
    ],
)
def test_settings_resolve_as_mergekit_does(setting, name, t, expected):
    value = evaluate_setting(setting, name, t)
    assert value == pytest.approx(expected) if expected is not None else value is None


# --- mergekit's documented examples ------------------------------------------------------------------------

# examples/linear.yml (dtype float16 there; the fixture is float32)
LINEAR = """
models:
  - model: {a}
    parameters:
      weight: 1.0
  - model: {b}
    parameters:
      weight: 0.3
  - model: {c}
    parameters:
      weight: 0.5
merge_method: linear
dtype: float32
"""


def test_linear_example_is_the_weighted_average(family, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MergeWarning)  # the first model is the base only for its layout
        merged = mergelab.merge_from_yaml(write_config(tmp_path, LINEAR, family), progress=False)
    direct = mergelab.merge(
        family["a"], [family[n] for n in "abc"], "average", weights=[1.0, 0.3, 0.5], progress=False
    )
    assert_same_tensors(merged, direct)
    a, b, c = state_dicts([family[n] for n in "abc"])
    for name in a:
        expected = (1.0 * a[name] + 0.3 * b[name] + 0.5 * c[name]) / 1.8
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)


def test_linear_averages_an_unlisted_base_model_as_mergekit_does(family, tmp_path):
    text = LINEAR + "base_model: {base}\nparameters:\n  weight: 0.2\n"
    merged = mergelab.merge_from_yaml(write_config(tmp_path, text, family), progress=False)
    base, a, b, c = state_dicts([family[n] for n in ("base", "a", "b", "c")])
    for name in base:  # the base joins the average with the top-level weight
        expected = (1.0 * a[name] + 0.3 * b[name] + 0.5 * c[name] + 0.2 * base[name]) / 2.0
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(MergekitConfigError, match="base_model: missing required parameter 'weight'"):
        read_mergekit_config(write_config(tmp_path, LINEAR + "base_model: {base}\n", family))


# examples/ties.yml: a density gradient, a weight gradient and a filtered weight (dtype float16 there)
TIES = """
models:
  - model: {a}
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: {b}
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: {c}
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: {base}
parameters:
  normalize: true
  int8_mask: true
dtype: float32
"""


def interpolate(values: list[float], t: float) -> float:
    """A gradient at t, by hand: the two neighbouring values, linearly."""
    position = t * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (position - low) * (values[high] - values[low])


def test_ties_example_resolves_gradients_and_filters_per_tensor(family, tmp_path, capsys):
    path = write_config(tmp_path, TIES, family)
    merged = mergelab.merge_from_yaml(path, progress=False)
    assert "int8_mask: ignored" in capsys.readouterr().err
    base, a, b, c = state_dicts([family[n] for n in ("base", "a", "b", "c")])
    for name in base:
        t = layer_t(name)
        densities = (interpolate([1, 0.7, 0.1], t), 0.5, 0.33)
        weights = (1.0, interpolate([0, 0.3, 0.7, 1], t), 0.5 if "mlp" in name else 0.0)
        # mergekit's ties with normalize: true is mergelab's tensor-scope ties with the disjoint mean
        ties = get_method("ties", density=densities, weights=weights, trim_scope="tensor", agg="mean")
        expected = ties.merge(base[name], [a[name], b[name], c[name]], TensorContext(name=name))
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=0, msg=name)
    layer_one_mlp = read_mergekit_config(path).tensor_hparams["model.layers.1.mlp.down_proj.weight"]
    assert layer_one_mlp["density"] == pytest.approx([0.8, 0.5, 0.33])  # t = 1/3: 1 - (2/3) 0.3
    assert layer_one_mlp["weights"] == pytest.approx([1.0, 0.3, 0.5])


# examples/bio-merge.yml: ties without normalization (the agreeing entries are summed)
BIO_MERGE = """
models:
  - model: {a}
    parameters:
      density: 0.5
      weight: 0.5
  - model: {b}
    parameters:
      density: 0.5
      weight: 0.5
merge_method: ties
base_model: {base}
parameters:
  normalize: false
  int8_mask: true
dtype: float32
"""


def test_bio_merge_example_is_ties_with_summed_agreeing_entries(family, tmp_path):
    merge_plan = read_mergekit_config(write_config(tmp_path, BIO_MERGE, family))
    assert merge_plan.tensor_hparams == {}
    assert merge_plan.hparams == {
        "density": 0.5,
        "scale": 1.0,
        "trim_scope": "tensor",
        "sign": "sum",
        "elect": True,
        "agg": "sum",
        "weights": [0.5, 0.5],
    }
    merged = mergelab.merge_from_yaml(write_config(tmp_path, BIO_MERGE, family), progress=False)
    direct = mergelab.merge(
        family["base"],
        [family["a"], family["b"]],
        "ties",
        density=0.5,
        trim_scope="tensor",
        agg="sum",
        weights=[0.5, 0.5],
        progress=False,
    )
    assert_same_tensors(merged, direct)


# docs/merge_methods.md, task arithmetic: the base listed among the models, lambda and normalize
TASK_ARITHMETIC = """
models:
  - model: {base}
  - model: {a}
    parameters:
      weight: 0.6
  - model: {b}
    parameters:
      weight: 0.2
merge_method: task_arithmetic
base_model: {base}
parameters:
  lambda: 0.8
  normalize: true
"""


def test_task_arithmetic_skips_the_listed_base_and_normalizes_weights(family, tmp_path):
    merged = mergelab.merge_from_yaml(write_config(tmp_path, TASK_ARITHMETIC, family), progress=False)
    base, a, b = state_dicts([family[n] for n in ("base", "a", "b")])
    for name in base:
        expected = base[name] + 0.8 * (0.75 * (a[name] - base[name]) + 0.25 * (b[name] - base[name]))
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)


# the DARE-TIES config of mergekit's docs (and LazyMergekit), with normalize: true
DARE_TIES = """
models:
  - model: {base}
    # No parameters necessary for base model
  - model: {a}
    parameters:
      density: 0.53
      weight: 0.4
  - model: {b}
    parameters:
      density: 0.53
      weight: 0.3
merge_method: dare_ties
base_model: {base}
parameters:
  int8_mask: true
  normalize: {normalize}
dtype: float32
"""


def test_dare_ties_example_needs_normalize_and_is_mergelab_dare_ties(family, tmp_path):
    with pytest.raises(MergekitConfigError, match="parameters.normalize: dare_ties with normalize: false"):
        read_mergekit_config(write_config(tmp_path, DARE_TIES, {**family, "normalize": "false"}))
    path = write_config(tmp_path, DARE_TIES, {**family, "normalize": "true"})
    merged = mergelab.merge_from_yaml(path, progress=False)
    direct = mergelab.merge(
        family["base"],
        [family["a"], family["b"]],
        "dare",
        density=0.53,
        combine="ties",
        weights=[0.4, 0.3],
        progress=False,
    )
    assert_same_tensors(merged, direct)


DARE_LINEAR_PER_MODEL_DENSITY = """
models:
  - model: {a}
    parameters:
      density: 0.5
      weight: 1.0
  - model: {b}
    parameters:
      density: [0.2, 0.8]
      weight: 0.5
merge_method: dare_linear
base_model: {base}
"""


def test_dare_linear_with_a_density_per_model_and_layer(family, tmp_path):
    from mergelab.methods.dare import keep_mask, mask_seed

    merged = mergelab.merge_from_yaml(
        write_config(tmp_path, DARE_LINEAR_PER_MODEL_DENSITY, family), progress=False
    )
    base, a, b = state_dicts([family[n] for n in ("base", "a", "b")])
    for name in base:
        densities = (0.5, 0.2 + 0.6 * layer_t(name))
        expected = base[name].clone()
        for index, (expert, weight) in enumerate(zip((a, b), (1.0, 0.5))):
            kept = keep_mask(base[name].shape, densities[index], mask_seed(0, index, name))
            expected += weight * (expert[name] - base[name]) * kept / densities[index]
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6, msg=name)


# examples/gradient-slerp.yml: one slice over every layer is the same as `models`
GRADIENT_SLERP = """
slices:
  - sources:
      - model: {a}
        layer_range: [0, 4]
      - model: {b}
        layer_range: [0, 4]
merge_method: slerp
base_model: {a}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float32
"""


@pytest.mark.skipif("slerp" not in METHODS, reason="mergelab's slerp method is not in this tree")
def test_gradient_slerp_example_interpolates_from_the_base_model(family, tmp_path):
    merged = mergelab.merge_from_yaml(write_config(tmp_path, GRADIENT_SLERP, family), progress=False)
    a, b = state_dicts([family["a"], family["b"]])
    for name in a:
        t = layer_t(name)
        if "self_attn" in name:
            t = interpolate([0, 0.5, 0.3, 0.7, 1], t)
        elif "mlp" in name:
            t = interpolate([1, 0.5, 0.7, 0.3, 0], t)
        else:
            t = 0.5
        expected = get_method("slerp", t=t).merge(a[name], [a[name], b[name]], TensorContext(name=name))
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6, msg=name)


def test_a_model_with_a_lora_adapter_is_the_adapter_as_an_expert(family, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(family["base"])
    config = peft.LoraConfig(init_lora_weights=False, r=2, lora_alpha=4, target_modules=["q_proj", "up_proj"])
    adapter = tmp_path / "adapter"
    peft.get_peft_model(model, config).save_pretrained(adapter)
    text = BIO_MERGE.replace("model: {b}", "model: {base}+" + str(adapter))
    merged = mergelab.merge_from_yaml(write_config(tmp_path, text, family), progress=False)
    direct = mergelab.merge(
        family["base"],
        [family["a"], adapter],
        "ties",
        density=0.5,
        trim_scope="tensor",
        agg="sum",
        weights=[0.5, 0.5],
        progress=False,
    )
    assert_same_tensors(merged, direct)
    alone = mergelab.merge(
        family["base"],
        [family["a"]],
        "ties",
        density=0.5,
        trim_scope="tensor",
        agg="sum",
        weights=[0.5],
        progress=False,
    )
    name = "model.layers.0.self_attn.q_proj.weight"  # the adapter's delta reaches the merge
    assert not torch.equal(merged[name], alone[name])


# the newer methods, with the key parameters of mergekit's docs/merge_methods.md
NEWER = """
models:
  - model: {{a}}
    parameters:
      weight: 1.5
      {per_model}
  - model: {{b}}
    parameters:
      weight: 0.5
      {per_model}
merge_method: {method}
base_model: {{base}}
parameters:
  {shared}
"""


@pytest.mark.parametrize(
    ("method", "per_model", "shared", "mergelab_method", "hparams"),
    [
        (
            "breadcrumbs",
            "density: 0.4\n      gamma: 0.05",
            "lambda: 0.9",
            "breadcrumbs",
            {"density": 0.4, "gamma": 0.05, "scale": 0.9, "combine": "linear"},
        ),
        (
            "breadcrumbs_ties",
            "density: 0.4",
            "normalize: false",
            "breadcrumbs",
            {"density": 0.4, "gamma": 0.01, "combine": "ties"},
        ),
        (
            "della",
            "density: 0.5\n      epsilon: 0.1",
            "lambda: 1.1",
            "della",
            {"density": 0.5, "epsilon": 0.1, "scale": 1.1, "combine": "ties"},
        ),
        (
            "della_linear",
            "density: 0.5",
            "normalize: true",
            "della",
            {"density": 0.5, "epsilon": 0.15, "combine": "linear"},
        ),
    ],
)
def test_newer_task_vector_methods_are_mergelabs(
    family, tmp_path, method, per_model, shared, mergelab_method, hparams
):
    if mergelab_method not in METHODS:
        pytest.skip(f"mergelab's {mergelab_method} is not in this tree")
    text = NEWER.format(method=method, per_model=per_model, shared=shared)
    merged = mergelab.merge_from_yaml(write_config(tmp_path, text, family), progress=False)
    # della_linear's normalize: true divides the weights by their sum, 2
    weights = [0.75, 0.25] if method == "della_linear" else [1.5, 0.5]
    direct = mergelab.merge(
        family["base"],
        [family["a"], family["b"]],
        mergelab_method,
        weights=weights,
        progress=False,
        **hparams,
    )
    assert_same_tensors(merged, direct)


@pytest.mark.skipif("model_stock" not in METHODS, reason="mergelab's model_stock is not in this tree")
def test_model_stock_merges_the_models_besides_the_base(family, tmp_path):
    text = "models:\n  - model: {base}\n  - model: {a}\n  - model: {b}\n  - model: {c}\nmerge_method: model_stock\nbase_model: {base}\n"
    merged = mergelab.merge_from_yaml(write_config(tmp_path, text, family), progress=False)
    direct = mergelab.merge(family["base"], [family[n] for n in "abc"], "model_stock", progress=False)
    assert_same_tensors(merged, direct)
    with pytest.raises(MergekitConfigError, match="parameters.filter_wise"):
        read_mergekit_config(write_config(tmp_path, text + "parameters: {{filter_wise: true}}\n", family))


# --- the command line --------------------------------------------------------------------------------------


def weight_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("model*.safetensors*"))}


def test_cli_merges_a_mergekit_config_like_the_direct_call(family, tmp_path, capsys):
    path = write_config(tmp_path, BIO_MERGE, family)
    assert cli(["merge", f"config={path}", f"out={tmp_path / 'from_yaml'}", "progress=false"]) == 0
    mergelab.merge(
        family["base"],
        [family["a"], family["b"]],
        "ties",
        out=tmp_path / "direct",
        density=0.5,
        trim_scope="tensor",
        agg="sum",
        weights=[0.5, 0.5],
        progress=False,
    )
    assert weight_files(tmp_path / "from_yaml") == weight_files(tmp_path / "direct")
    assert weight_files(tmp_path / "direct")


def test_a_mergekit_merge_is_recorded_and_merges_again_from_its_mergelab_json(family, tmp_path):
    first = mergelab.merge_from_yaml(write_config(tmp_path, TIES, family), tmp_path / "first", progress=False)
    record = json.loads((first / "mergelab.json").read_text())
    assert "model.layers.3.mlp.up_proj.weight" in record["merge"]["hparams"]["tensor_hparams"]
    again = tmp_path / "again"
    assert cli(["merge", f"config={first / 'mergelab.json'}", f"out={again}", "progress=false"]) == 0
    assert weight_files(again) == weight_files(first) and weight_files(first)
    assert (again / "mergelab.json").read_bytes() == (first / "mergelab.json").read_bytes()
    assert cli(["merge", f"config={first}", f"out={again}", "overwrite=true", "progress=false"]) == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["base=/b"], "config= gives the inputs and the method: remove base"),
        (["merge=ties"], "config= gives the inputs and the method: remove merge"),
        ([], "missing required option(s): out"),
    ],
)
def test_cli_config_file_takes_only_run_options(family, tmp_path, capsys, arguments, message):
    path = write_config(tmp_path, BIO_MERGE, family)
    out = [] if not arguments else [f"out={tmp_path / 'o'}"]
    assert cli(["merge", f"config={path}", *out, *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- refused -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # examples/orcamini-platy-44layer.yml: a frankenmerge
        (
            "slices:\n  - sources:\n    - model: {a}\n      layer_range: [0, 3]\n  - sources:\n"
            "    - model: {b}\n      layer_range: [1, 4]\nmerge_method: passthrough\ndtype: float16\n",
            "merge_method: 'passthrough' is not supported by mergelab",
        ),
        (
            "slices:\n  - sources:\n    - model: {a}\n      layer_range: [0, 3]\n  - sources:\n"
            "    - model: {b}\n      layer_range: [1, 4]\nmerge_method: linear\n",
            "slices: mergelab merges whole models",
        ),
        (
            "slices:\n  - sources:\n    - model: {a}\n      layer_range: [0, 2]\n      parameters: {{weight: 1}}\n"
            "    - model: {b}\n      layer_range: [0, 2]\n      parameters: {{weight: 1}}\nmerge_method: linear\n",
            "layer_range [0, 2] is not the whole model [0, 4]",
        ),
        (LINEAR + "tokenizer_source: some/model\n", "tokenizer_source: 'some/model' is neither base_model"),
        (LINEAR + "chat_template: chatml\n", "chat_template: not supported"),
        (LINEAR + "tokenizer:\n  source: union\n", "tokenizer: building a tokenizer is not supported"),
        (LINEAR.replace("dtype: float32", "dtype: int4"), "dtype: 'int4' is not one of"),
        (LINEAR + "extra_key: 1\n", "extra_key: not a mergekit configuration key"),
        (
            LINEAR.replace("weight: 0.3", "wieght: 0.3"),
            "models[1].parameters.wieght: mergekit's 'linear' has no",
        ),
        (
            LINEAR.replace("weight: 0.3", "normalize: false"),
            "models[1].parameters.normalize: 'normalize' applies",
        ),
        (LINEAR + "parameters:\n  normalize: false\n", "parameters.normalize: mergelab's average divides"),
        (
            LINEAR.replace("    parameters:\n      weight: 0.3\n", ""),
            "models[1]: missing required parameter 'weight'",
        ),
        (LINEAR.replace("model: {b}", "model: {b}+some/lora"), "a LoRA adapter merges over the base model"),
        (
            "models: [{{model: {a}+{b}}}, {{model: {c}}}]\nmerge_method: ties\nbase_model: {a}+{b}\n",
            "the base cannot",
        ),
        (LINEAR.replace("merge_method: linear", "merge_method: nuslerp"), "'nuslerp' is not supported"),
        (BIO_MERGE.replace("base_model: {base}\n", ""), "base_model: mergekit's 'ties' needs a base_model"),
        (
            BIO_MERGE.replace("normalize: false", "rescale: true"),
            "parameters.rescale: mergelab's ties does not",
        ),
        (
            BIO_MERGE.replace(
                "density: 0.5\n      weight: 0.5\n  - model: {b}",
                "density: 0.5\n      weight: 0.5\n  - model: {a}",
            ),
            "a model is listed twice",
        ),
        (
            "models: [{{model: {a}}}]\nmerge_method: ties\nbase_model: {a}\n",
            "no model to merge besides base_model",
        ),
        (BIO_MERGE.replace("weight: 0.5", "weight: heavy"), "must be a number, got 'heavy'"),
        ("- not a mapping\n", "a mergekit configuration is a YAML mapping"),
    ],
)
def test_what_mergelab_cannot_merge_is_refused_naming_the_key(family, tmp_path, text, message):
    path = write_config(tmp_path, text, family)
    with pytest.raises(MergekitConfigError, match=None) as error:
        read_mergekit_config(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_a_method_mergelab_lacks_in_this_version_is_refused(family, tmp_path, monkeypatch):
    monkeypatch.setitem(
        METHOD_SPECS, "linear", MethodSpec("no_such_method", {}, {"weight": 1.0}, lambda s, m: {})
    )
    with pytest.raises(MergekitConfigError, match="needs mergelab's 'no_such_method' method"):
        read_mergekit_config(write_config(tmp_path, LINEAR, family))


def test_cli_reports_a_refused_config_in_one_line(family, tmp_path, capsys):
    path = write_config(tmp_path, LINEAR + "tokenizer_source: some/model\n", family)
    assert cli(["merge", f"config={path}", f"out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("mergelab merge: error:") and "tokenizer_source" in err and len(err.splitlines()) == 1
    )


def test_dtype_and_tokenizer_source_become_mergelab_options(family, tmp_path):
    text = LINEAR.replace("dtype: float32", "dtype: bfloat16")
    merged = mergelab.merge_from_yaml(write_config(tmp_path, text, family), progress=False)
    direct = mergelab.merge(
        family["a"],
        [family[n] for n in "abc"],
        "average",
        weights=[1.0, 0.3, 0.5],
        out_dtype="bfloat16",
        progress=False,
    )
    assert_same_tensors(merged, direct)
    assert {tensor.dtype for tensor in merged.values()} == {torch.bfloat16}
    same = read_mergekit_config(write_config(tmp_path, LINEAR + "out_dtype: float32\n", family))
    assert same.options == {}  # the base's dtype: nothing to ask for
    union = read_mergekit_config(write_config(tmp_path, BIO_MERGE + "tokenizer_source: union\n", family))
    assert union.options == {"tokenizer_source": "union"}
    expert = read_mergekit_config(write_config(tmp_path, BIO_MERGE + "tokenizer_source: {b}\n", family))
    assert expert.options == {"tokenizer_source": "expert:1"}
    base = read_mergekit_config(write_config(tmp_path, BIO_MERGE + "tokenizer_source: {base}\n", family))
    assert base.options == {}


def test_plan_records_only_the_tensors_that_differ(family, tmp_path):
    merge_plan = read_mergekit_config(write_config(tmp_path, TIES, family))
    assert merge_plan.method == "ties" and merge_plan.base == str(family["base"])
    names = set(state_dicts([family["base"]])[0])
    # The most common setting is t = 0 outside the MLPs: layer 0's attention and norms, and the tensors
    # outside the layers (embeddings, final norm, LM head), 6 + 3 of them; every other tensor differs.
    shared = {name for name in names if layer_t(name) == 0 and "mlp" not in name}
    assert len(shared) == 9
    assert set(merge_plan.tensor_hparams) == names - shared
    # layer 0's MLP differs from the shared setting only by the third model's filtered weight
    assert merge_plan.tensor_hparams["model.layers.0.mlp.up_proj.weight"] == {"weights": [1.0, 0.0, 0.5]}
    assert merge_plan.hparams["weights"] == [1.0, 0.0, 0.0] and merge_plan.hparams["density"] == [
        1.0,
        0.5,
        0.33,
    ]


def test_cli_names_a_missing_config_file(tmp_path, capsys):
    assert cli(["merge", f"config={tmp_path / 'absent.yml'}", f"out={tmp_path / 'o'}"]) == 2
    assert f"config={tmp_path / 'absent.yml'}: no such file" in capsys.readouterr().err
    assert (
        cli(["merge", f"config={tmp_path}", f"out={tmp_path / 'o'}"]) == 2
    )  # a directory: its mergelab.json
    assert f"config={tmp_path / 'mergelab.json'}: no such file" in capsys.readouterr().err
