"""The same mergekit YAML through mergekit 0.1.5 itself and through `mergelab.merge_from_yaml`: layer
gradients and filters resolve to the same per-tensor settings, so the merged tensors agree to float32
rounding. mergekit lives in its own environment (`.venv-bench`, see `scripts/bench_merge.py`); without it
these tests skip. Configs use weight 1 wherever TIES elects signs: mergekit elects on weighted values,
mergelab (as the paper) before weighting, a documented difference."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import mergelab
from tests.conftest import state_dicts
from tests.test_mergekit_config import (  # noqa: F401  (family: the module fixture)
    GRADIENT_SLERP,
    LINEAR,
    family,
    write_config,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

TIES_GRADIENTS = """
models:
  - model: {a}
    parameters:
      density: [0.9, 0.5, 0.2]
      weight: 1.0
  - model: {b}
    parameters:
      density:
        - filter: mlp
          value: [0.3, 0.8]
        - value: 0.6
      weight: 1.0
merge_method: ties
base_model: {base}
parameters:
  normalize: true
dtype: float32
"""

TASK_ARITHMETIC_GRADIENTS = """
models:
  - model: {a}
    parameters:
      weight: [0, 0.3, 0.7, 1]
  - model: {b}
    parameters:
      weight:
        - filter: self_attn
          value: [1, 0.2]
        - value: 0.5
merge_method: task_arithmetic
base_model: {base}
parameters:
  lambda: 0.7
dtype: float32
"""


BREADCRUMBS = """
models:
  - model: {a}
    parameters:
      weight: 0.8
      density: [0.5, 0.3]
      gamma: 0.02
  - model: {b}
    parameters:
      weight: 0.4
      density: [0.5, 0.3]
      gamma: 0.02
merge_method: breadcrumbs
base_model: {base}
parameters:
  lambda: 1.2
"""


def mergekit_yaml() -> str:
    found = shutil.which("mergekit-yaml") or REPO / ".venv-bench" / "bin" / "mergekit-yaml"
    if not Path(found).exists():
        pytest.skip("mergekit is not installed (.venv-bench: pip install mergekit==0.1.5)")
    return str(found)


def merged_by_mergekit(config: Path, out: Path) -> dict[str, torch.Tensor]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    command = [mergekit_yaml(), str(config), str(out), "--no-copy-tokenizer", "--quiet"]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return state_dicts([out])[0]


@pytest.mark.parametrize(
    "text", [LINEAR, TIES_GRADIENTS, TASK_ARITHMETIC_GRADIENTS, BREADCRUMBS, GRADIENT_SLERP]
)
def test_mergelab_merges_a_mergekit_config_as_mergekit_does(family, tmp_path, text):  # noqa: F811
    config = write_config(tmp_path, text, family)
    expected = merged_by_mergekit(config, tmp_path / "mergekit")
    merged = mergelab.merge_from_yaml(config, progress=False)
    assert sorted(merged) == sorted(expected)
    base, first = state_dicts([family["base"], family["a"]])
    moved = [name for name in expected if not torch.equal(merged[name], base[name])]
    assert len(moved) > len(expected) / 2 and any(not torch.equal(merged[n], first[n]) for n in moved)
    for name in expected:
        torch.testing.assert_close(merged[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
