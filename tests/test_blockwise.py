"""Slice-by-slice merging equals merging whole tensors, bit for bit, for every elementwise method."""

import pytest
import torch

from mergelab import api
from mergelab.engine import blockwise
from mergelab.engine.blockwise import merge_blockwise, upcast
from mergelab.methods import TensorContext, get_method

CPU = torch.device("cpu")


def tied_tensors(
    n_experts: int, shape: tuple[int, ...], seed: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """bf16 base and experts whose task vectors take few distinct values, so the trim cut has many ties."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator).to(torch.bfloat16)
    experts = [
        (base.float() + torch.randint(-3, 4, shape, generator=generator) / 8).to(torch.bfloat16)
        for _ in range(n_experts)
    ]
    return base, experts


def whole_tensor_merge(method, base, experts) -> torch.Tensor:
    merged = method.merge(upcast(base, CPU), [upcast(expert, CPU) for expert in experts], TensorContext("w"))
    return merged.to(base.dtype)


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("ties", {"trim_scope": "tensor", "density": 0.2}),
        ("ties", {"trim_scope": "tensor", "density": 0.5, "sign": "count", "agg": "sum"}),
        ("task_arithmetic", {"scale": 0.3}),
        ("average", {"weights": [1.0, 2.0, 3.0]}),
    ],
)
def test_slices_equal_the_whole_tensor(name, hparams):
    base, experts = tied_tensors(3, (37, 11), seed=1)
    method = get_method(name, **hparams)
    sliced = merge_blockwise(method, base, experts, TensorContext("w"), CPU, block_entries=50)
    assert sliced.dtype == torch.bfloat16 and sliced.shape == base.shape
    assert torch.equal(sliced, whole_tensor_merge(method, base, experts))


def test_streaming_global_ties_is_unchanged_by_slicing(monkeypatch):
    generator = torch.Generator().manual_seed(2)
    base = {"a": torch.randn(40, 9, generator=generator), "b": torch.randn(23, generator=generator)}
    experts = [
        {
            name: (value + torch.randint(-2, 3, value.shape, generator=generator) / 4)
            for name, value in base.items()
        }
        for _ in range(3)
    ]
    whole = api.merge(base, experts, "ties", device="cpu", progress=False)
    monkeypatch.setattr(blockwise, "BLOCK_ENTRIES", 16)
    sliced = api.merge(base, experts, "ties", device="cpu", progress=False)
    assert all(torch.equal(whole[name], sliced[name]) for name in base)
    kept = sum(int((sliced[name] != base[name]).sum()) for name in base)
    assert kept > 0
