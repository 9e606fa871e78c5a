"""NaN and infinity never pass silently: in an input, in a merged tensor, in a hyperparameter (issue 16.2)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergelab.api.merging import merge, merge_with_report
from mergelab.cli import main as cli
from mergelab.engine.finite import NonFiniteError, nonfinite_count
from mergelab.methods import MergeConfigError, MergeWarning


def write(path, **tensors):
    save_file(tensors, path)
    return path


@pytest.fixture
def checkpoints(tmp_path):
    """A base and two experts as safetensors files; expert 1's `b` holds a NaN and an inf."""
    base = write(tmp_path / "base.safetensors", a=torch.zeros(3, 4), b=torch.zeros(5))
    clean = write(tmp_path / "clean.safetensors", a=torch.ones(3, 4), b=torch.ones(5))
    dirty_b = torch.ones(5)
    dirty_b[1], dirty_b[3] = math.nan, math.inf
    dirty = write(tmp_path / "dirty.safetensors", a=torch.ones(3, 4), b=dirty_b)
    return {"base": base, "clean": clean, "dirty": dirty, "root": tmp_path}


def test_nonfinite_count_counts_nan_and_both_infinities():
    values = torch.tensor([1.0, math.nan, -math.inf, math.inf, 2.0], dtype=torch.bfloat16)
    assert nonfinite_count(values) == 3
    assert nonfinite_count(torch.tensor([1, 2, 3])) == 0  # integers cannot be non-finite
    # finite values whose sum overflows float16 are still all finite
    assert nonfinite_count(torch.full((4,), 60000.0, dtype=torch.float16)) == 0


def test_nan_in_an_expert_is_named_with_its_count(checkpoints, capsys):
    out = checkpoints["root"] / "out"
    code = cli(
        [
            "merge",
            "merge=task_arithmetic",
            f"base={checkpoints['base']}",
            f"experts=[{checkpoints['clean']},{checkpoints['dirty']}]",
            f"out={out}",
            "progress=false",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"expert 1 ({checkpoints['dirty']}): tensor 'b' has 2 non-finite (NaN or inf) value(s) of 5" in err
    assert "allow_nonfinite=true" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_nan_in_the_base_is_an_error_for_methods_that_use_it(checkpoints):
    with pytest.raises(NonFiniteError, match="base: tensor 'b' has 2 non-finite"):
        merge(checkpoints["dirty"], [checkpoints["clean"]], "task_arithmetic", progress=False)
    # average ignores the base's values, so a NaN there does not matter
    merged = merge(checkpoints["dirty"], [checkpoints["clean"]], "average", progress=False)
    assert torch.equal(merged["b"], torch.ones(5))


def test_allow_nonfinite_merges_with_a_warning_and_counts_the_merged_entries(checkpoints):
    out = checkpoints["root"] / "out"
    with pytest.warns(MergeWarning) as caught:
        code = cli(
            [
                "merge",
                "merge=task_arithmetic",
                f"base={checkpoints['base']}",
                f"experts=[{checkpoints['clean']},{checkpoints['dirty']}]",
                f"out={out}",
                "progress=false",
                "allow_nonfinite=true",
            ]
        )
    assert code == 0
    lines = [warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught]
    assert lines[0].startswith("mergelab: warning: expert 1") and "tensor 'b' has 2 non-finite" in lines[0]
    assert lines[1].startswith("mergelab: warning: merged tensor 'b' has 2 non-finite")
    merged = load_file(out / "model.safetensors")["b"]
    assert math.isnan(merged[1]) and math.isinf(merged[3])
    with pytest.warns(MergeWarning):
        _, report = merge_with_report(
            checkpoints["base"],
            [checkpoints["clean"], checkpoints["dirty"]],
            "task_arithmetic",
            progress=False,
            allow_nonfinite=True,
        )
    assert report.nonfinite_entries == 2


def test_a_merge_that_overflows_finite_inputs_is_an_error(tmp_path):
    base = write(tmp_path / "base.safetensors", a=torch.zeros(4, dtype=torch.float16))
    expert = write(tmp_path / "e.safetensors", a=torch.full((4,), 1000.0, dtype=torch.float16))
    # 0 + 100 * 1000 = 1e5 does not fit float16 (max 65504): inf in the output dtype
    with pytest.raises(NonFiniteError, match=r"merged tensor 'a' has 4 non-finite .*float16"):
        merge(base, [expert], "task_arithmetic", scale=100.0, progress=False)


@pytest.mark.parametrize(
    ("method", "hparams", "message"),
    [
        ("task_arithmetic", {"scale": math.nan}, "scale=nan must be a finite number"),
        ("ties", {"scale": math.inf}, "scale=inf must be a finite number"),
        (
            "task_arithmetic",
            {"weights": [1.0, math.nan]},
            "weights=[1.0, nan] must be a list of numbers or null",
        ),
        ("ties", {"weights": [1, -1]}, "the experts weighted [1, -1] sum to 0"),
        (
            "dare",
            {"combine": "ties", "weights": [2, 1, -3]},
            "the experts weighted [2, 1, -3] sum to 0",
        ),
        ("average", {"weights": [1, -1]}, "weights must not sum to 0"),
        ("della", {"weights": [1, -1]}, "the experts weighted [1, -1] sum to 0"),
    ],
)
def test_nonfinite_and_zero_sum_hyperparameters_are_refused(checkpoints, method, hparams, message):
    with pytest.raises(MergeConfigError) as error:
        merge(checkpoints["base"], [checkpoints["clean"]] * 2, method, progress=False, **hparams)
    assert message in str(error.value)


def test_ties_with_weights_that_do_not_cancel_still_merges(checkpoints):
    # [2, -1]: no subset of weights sums to 0, so the disjoint mean is defined everywhere
    with pytest.warns(MergeWarning, match="is expert 0 again"):
        merged = merge(
            checkpoints["base"],
            [checkpoints["clean"], checkpoints["clean"]],
            "ties",
            trim_scope="tensor",
            density=1.0,
            weights=[2, -1],
            progress=False,
        )
    # both task vectors are 1 and agree: (2 * 1 + -1 * 1) / (2 + -1) = 1
    assert torch.equal(merged["a"], torch.ones(3, 4))
