"""The dtypes of a merge: what the method computes in (`dtype`) and what float tensors are written as
(`out_dtype`).

Methods compute in float32 by default; `dtype: float64` keeps the rounding of sums over many experts (or of
float64 checkpoints) out of the result. Each float tensor is written in the base's dtype unless `out_dtype`
names one (float32, float16, bfloat16), e.g. float32 output from bfloat16 checkpoints without a bfloat16
rounding in between. Non-float tensors and buffers are copied from the base whatever these say.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mergelab.engine.checkpoint import TensorInfo, is_float
from mergelab.methods import MergeConfigError, MergeMethod

COMPUTE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
OUT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class Precision:
    """The compute dtype and the output dtype of float tensors (None: each tensor keeps the base's)."""

    compute: torch.dtype = torch.float32
    out: torch.dtype | None = None

    @property
    def is_default(self) -> bool:
        return self.compute == torch.float32 and self.out is None

    def output_dtype(self, stored: torch.dtype) -> torch.dtype:
        """The dtype a merged float tensor stored as `stored` in the base is written in."""
        return self.out or stored

    def output_infos(self, infos: Mapping[str, TensorInfo]) -> dict[str, TensorInfo]:
        """The output's tensor infos: float tensors in the output dtype, the others as the base stores them."""
        return {
            name: replace(info, dtype=self.output_dtype(info.dtype)) if is_float(info.dtype) else info
            for name, info in infos.items()
        }

    def check_method(self, method: MergeMethod) -> None:
        """Refuse float64 compute for methods that trim by magnitude: their exact cut is found over float32
        bit patterns, and float64 task vectors would not be cut at exactly `int(density * n)` entries."""
        if self.compute != torch.float32 and method.trims:
            raise MergeConfigError(
                f"dtype={_name(self.compute)}: method '{method.name}' trims by magnitude, which is exact in "
                "float32 only; use dtype=float32"
            )


DEFAULT_PRECISION = Precision()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_precision(dtype: str = "float32", out_dtype: str | None = None) -> Precision:
    """`dtype` and `out_dtype` as given to `mergelab.merge` / `mergelab merge`, checked."""
    if dtype not in COMPUTE_DTYPES:
        raise MergeConfigError(f"dtype={dtype!r} is not one of {list(COMPUTE_DTYPES)}")
    if out_dtype is not None and out_dtype not in OUT_DTYPES:
        raise MergeConfigError(
            f"out_dtype={out_dtype!r} is not one of {list(OUT_DTYPES)} (or null: the base's dtype)"
        )
    return Precision(COMPUTE_DTYPES[dtype], None if out_dtype is None else OUT_DTYPES[out_dtype])


def record_config_dtype(config_path: Path, precision: Precision) -> None:
    """Make a copied `config.json` say the output dtype (`dtype`, and `torch_dtype` where the base had it),
    so `from_pretrained(..., dtype="auto")` loads the weights as written."""
    if precision.out is None or not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    keys = [key for key in ("dtype", "torch_dtype") if key in config] or ["dtype"]
    for key in keys:
        config[key] = _name(precision.out)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
