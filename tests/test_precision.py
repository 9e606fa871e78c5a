"""`dtype` (compute) and `out_dtype` (written float tensors) of a merge."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from mergelab.api.merging import merge
from mergelab.cli import main as cli
from mergelab.engine import blockwise
from mergelab.engine.merge import merge_tensor
from mergelab.engine.precision import Precision
from mergelab.methods import MergeConfigError, TensorContext, get_method
from tests.conftest import fine_tune_like, state_dicts, tiny_llama


def quiet_merge(*args, **kwargs):
    return merge(*args, device="cpu", progress=False, **kwargs)


def test_float64_compute_keeps_what_float32_rounding_loses():
    # The average of 2^26, 1, -2^26, 1 in order: in float32, 2^24 + 1/4 rounds back to 2^24 (its spacing
    # there is 2), so the first 1/4 vanishes and 1/4 is left; float64 keeps both quarters: 1/2.
    experts = [{"w": torch.tensor([value], dtype=torch.float32)} for value in (2.0**26, 1.0, -(2.0**26), 1.0)]
    base = {"w": torch.zeros(1)}
    in_float32 = quiet_merge(base, experts, "average")
    in_float64 = quiet_merge(base, experts, "average", dtype="float64")
    assert in_float32["w"].item() == 0.25
    assert in_float64["w"].dtype == torch.float32
    assert in_float64["w"].item() == 0.5


def test_float64_checkpoints_keep_their_precision_only_with_float64_compute():
    base = {"w": torch.tensor([1.0], dtype=torch.float64)}
    expert = {"w": torch.tensor([1.0 + 1e-12], dtype=torch.float64)}
    in_float32 = quiet_merge(base, [expert], "task_arithmetic", scale=1.0)
    in_float64 = quiet_merge(base, [expert], "task_arithmetic", scale=1.0, dtype="float64")
    assert in_float32["w"].item() == 1.0  # 1 + 1e-12 is 1 in float32
    assert in_float64["w"].item() == pytest.approx(1.0 + 1e-12, rel=0, abs=1e-15)


def bf16_inputs():
    generator = torch.Generator().manual_seed(0)
    base = {
        "w": torch.randn(4, 8, generator=generator).bfloat16(),
        "steps": torch.tensor([3, 5], dtype=torch.int64),
    }
    experts = [
        {
            "w": (base["w"].float() + 0.01 * torch.randn(4, 8, generator=generator)).bfloat16(),
            "steps": base["steps"] + 1,
        }
        for _ in range(3)
    ]
    return base, experts


def task_arithmetic_float32(base, experts, scale=0.4):
    """Task arithmetic on the float32 values of the bf16 inputs, computed independently."""
    theta = base["w"].float()
    return theta + scale * sum(expert["w"].float() - theta for expert in experts)


@pytest.mark.parametrize(
    ("out_dtype", "expected_dtype"),
    [(None, torch.bfloat16), ("float32", torch.float32), ("float16", torch.float16)],
)
def test_out_dtype_writes_float_tensors_in_that_dtype_and_leaves_the_rest(out_dtype, expected_dtype):
    base, experts = bf16_inputs()
    merged = quiet_merge(base, experts, "task_arithmetic", out_dtype=out_dtype)
    assert merged["w"].dtype == expected_dtype
    # one rounding, from the float32 result to the output dtype (no bfloat16 rounding in between)
    assert torch.equal(merged["w"], task_arithmetic_float32(base, experts).to(expected_dtype))
    assert merged["steps"].dtype == torch.int64 and torch.equal(merged["steps"], base["steps"])


def test_sliced_merge_follows_compute_and_output_dtypes(monkeypatch):
    base, experts = bf16_inputs()
    method = get_method("task_arithmetic")
    precision = Precision(compute=torch.float64, out=torch.float32)
    context = TensorContext(name="w")
    whole = merge_tensor(
        method, base["w"], [e["w"] for e in experts], context, torch.device("cpu"), precision
    )
    monkeypatch.setattr(blockwise, "BLOCK_ENTRIES", 5)
    sliced = merge_tensor(
        method, base["w"], [e["w"] for e in experts], context, torch.device("cpu"), precision
    )
    assert sliced.dtype == torch.float32 and torch.equal(sliced, whole)
    theta = base["w"].double()
    expected = theta + 0.4 * sum(expert["w"].double() - theta for expert in experts)
    assert torch.equal(whole, expected.float())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dtype": "float16"}, "dtype='float16' is not one of ['float32', 'float64']"),
        ({"out_dtype": "int8"}, "out_dtype='int8' is not one of ['float32', 'float16', 'bfloat16']"),
        ({"dtype": "float64", "method": "ties"}, "dtype=float64: method 'ties' trims by magnitude"),
    ],
)
def test_bad_dtypes_are_named(options, message):
    method = options.pop("method", "average")
    base, experts = bf16_inputs()
    with pytest.raises(MergeConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        quiet_merge(base, experts, method, **options)


def test_cli_out_dtype_writes_a_checkpoint_that_loads_in_that_dtype(tmp_path):
    from transformers import AutoModelForCausalLM

    base_model = tiny_llama().to(torch.bfloat16)
    base_model.save_pretrained(tmp_path / "base")
    fine_tune_like(base_model, seed=1).save_pretrained(tmp_path / "expert")
    out = tmp_path / "merged"
    args = [f"base={tmp_path / 'base'}", f"experts=[{tmp_path / 'expert'}]", f"out={out}", "progress=false"]
    assert (
        cli(["merge", "merge=task_arithmetic", *args, "device=cpu", "out_dtype=float32", "dtype=float64"])
        == 0
    )
    with safe_open(out / "model.safetensors", "pt") as handle:
        assert {handle.get_tensor(name).dtype for name in handle.keys()} == {torch.float32}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert next(loaded.parameters()).dtype == torch.float32
    (base_sd, expert_sd, written) = state_dicts([tmp_path / "base", tmp_path / "expert", out])
    name = "model.layers.0.mlp.up_proj.weight"
    theta = base_sd[name].double()
    assert torch.equal(written[name], (theta + 0.4 * (expert_sd[name].double() - theta)).float())


def test_whole_model_methods_refuse_dtype_and_tokenizer_options():
    base, experts = bf16_inputs()
    for options in ({"dtype": "float64"}, {"out_dtype": "float16"}, {"tokenizer_source": "union"}):
        with pytest.raises(MergeConfigError, match="method 'pleas' merges whole models in float32"):
            quiet_merge(base, experts, "pleas", **options)


def test_a_value_beyond_the_output_dtype_is_the_non_finite_error():
    from mergelab.engine.finite import NonFiniteError

    expert = {"w": torch.tensor([1e5])}  # fine in float32, inf in float16 (max 65504)
    with pytest.raises(NonFiniteError, match="output dtype float16"):
        quiet_merge({"w": torch.zeros(1)}, [expert], "average", out_dtype="float16")
    assert quiet_merge({"w": torch.zeros(1)}, [expert], "average", out_dtype="bfloat16")["w"].isfinite().all()
