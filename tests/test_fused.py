"""The fused kernels equal the reference path (the methods' torch code) bit for bit, on every option."""

import numpy as np
import pytest
import torch

from mergelab import api
from mergelab.engine import blockwise, fused, kernels
from mergelab.engine.checkpoint import CheckpointError
from mergelab.engine.device import resolve_threads, torch_threads
from mergelab.engine.fused import KernelPool, fused_merge
from mergelab.engine.merge import merge_tensor
from mergelab.engine.pipeline import SliceStager, merge_pipelined
from mergelab.methods import TensorContext, get_method
from mergelab.methods.dare import keep_mask, mask_seed

CPU = torch.device("cpu")

TIES_OPTIONS = [
    {"density": 0.2},
    {"density": 0.5, "sign": "count", "agg": "sum"},
    {"density": 0.3, "sign": "count", "agg": "mean", "weights": [0.5, 1.5, 2.0], "scale": 0.7},
    {"density": 0.3, "elect": False, "agg": "mean_all", "weights": [0.5, 1.5, 2.0]},
    {"density": 0.4, "elect": False, "agg": "mean"},
    {"density": 0.25, "agg": "mean_all", "scale": 1.3},
    {"density": 1.0, "sign": "count"},
    {"density": 0.01},
]
OTHER_METHODS = [
    ("task_arithmetic", {"scale": 0.3}),
    ("task_arithmetic", {"scale": 0.7, "weights": [0.3, 0.7, 1.1]}),
    ("average", {}),
    ("average", {"weights": [1.0, 2.0, 3.0]}),
    ("dare", {"density": 0.3, "seed": 3}),
    ("dare", {"density": 0.5, "seed": 11, "weights": [0.5, 1.5, 2.0], "scale": 0.8}),
    ("dare", {"density": 0.3, "seed": 3, "combine": "ties"}),
    ("dare", {"density": 0.6, "seed": 5, "combine": "ties", "weights": [0.5, 1.5, 2.0]}),
    ("dare", {"density": 1.0, "combine": "ties"}),
]


def tied_tensors(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.bfloat16, n_experts: int = 3, low: int = -3
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Base and experts whose task vectors take few distinct values (many ties at the trim cut, many zero
    and cancelling votes); `low` below -3 biases them negative, so the majority sign is -1."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator).to(dtype)
    experts = [
        (base.float() + torch.randint(low, 4, shape, generator=generator) / 8).to(dtype)
        for _ in range(n_experts)
    ]
    return base, experts


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    assert a.dtype == b.dtype and a.shape == b.shape
    return torch.equal(
        a.view(torch.int16 if a.element_size() == 2 else torch.int32),
        b.view(a.shape).view(torch.int16 if a.element_size() == 2 else torch.int32),
    )


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def pool(request):
    with KernelPool(request.param) as kernel_pool:
        yield kernel_pool


@pytest.mark.parametrize("chunk", [64, 1 << 18], ids=["chunks of 64", "one chunk"])
@pytest.mark.parametrize("low", [-3, -5], ids=["majority +", "majority -"])
@pytest.mark.parametrize("hparams", TIES_OPTIONS)
def test_tensor_scope_ties_equals_the_reference(hparams, low, chunk, pool, monkeypatch):
    monkeypatch.setattr(fused, "CHUNK_ENTRIES", chunk)
    base, experts = tied_tensors((41, 13), seed=1, low=low)
    method = get_method("ties", trim_scope="tensor", **hparams)
    reference = merge_tensor(method, base, experts, TensorContext("w"), CPU)
    assert same_bits(fused_merge(method, base, experts, TensorContext("w"), pool), reference)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("name", "hparams"), [("ties", {"trim_scope": "tensor"}), *OTHER_METHODS])
def test_every_method_and_dtype_equals_the_reference(name, hparams, dtype, pool, monkeypatch):
    monkeypatch.setattr(fused, "CHUNK_ENTRIES", 300)
    base, experts = tied_tensors((57, 31), seed=2, dtype=dtype)
    method = get_method(name, **hparams)
    merged = fused_merge(method, base, experts, TensorContext("layer.0.w"), pool)
    reference = merge_tensor(method, base, experts, TensorContext("layer.0.w"), CPU)
    assert merged.dtype == dtype and same_bits(merged, reference)


def test_slices_of_the_reference_engine_agree_too(pool, monkeypatch):
    """Above `BLOCK_ENTRIES` the reference merges slice by slice; the fused result equals that as well."""
    monkeypatch.setattr(blockwise, "BLOCK_ENTRIES", 100)
    monkeypatch.setattr(fused, "CHUNK_ENTRIES", 77)
    base, experts = tied_tensors((30, 20), seed=3, low=-5)
    for sign in ("sum", "count"):
        method = get_method("ties", trim_scope="tensor", density=0.3, sign=sign)
        reference = merge_tensor(method, base, experts, TensorContext("w"), CPU)
        assert same_bits(fused_merge(method, base, experts, TensorContext("w"), pool), reference)


def test_zero_votes_take_the_majority_sign_of_the_tensor(pool):
    """Hand-made: two experts, `sign: count`; entry 0 has a +/- tie (zero vote), the rest vote negative,
    so entry 0 takes the majority sign -1 and its disjoint mean is the negative value."""
    base = torch.zeros(5)
    experts = [torch.tensor([1.0, -1.0, -2.0, -1.0, -3.0]), torch.tensor([-2.0, -1.0, -1.0, -2.0, -1.0])]
    method = get_method("ties", trim_scope="tensor", density=1.0, sign="count")
    merged = fused_merge(method, base, experts, TensorContext("w"), pool)
    assert merged.tolist() == [-2.0, -1.0, -1.5, -1.5, -2.0]


@pytest.mark.parametrize("seed", [0, 7, mask_seed(0, 1, "model.layers.0.mlp.up_proj.weight")])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_masks_are_torchs(seed, density):
    n = 5000
    keep_below = int(np.ceil(float(np.float32(density)) * 2**24))
    bits = np.zeros((n + 7) // 8, np.uint8)
    kernels.dare_keep_bits(seed, n, keep_below, bits)
    unpacked = np.unpackbits(bits, bitorder="little")[:n].astype(bool)
    assert np.array_equal(unpacked, keep_mask(torch.Size([n]), density, seed).numpy())


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_output_rounds_to_nearest_even_as_torch(out_dtype, pool):
    """Float32 results cast to 16 bits exactly as `Tensor.to`: midpoints, subnormals, overflow, zeros."""
    generator = torch.Generator().manual_seed(4)
    values = torch.randn(4000, generator=generator) * torch.exp(torch.randn(4000, generator=generator) * 8)
    bits = values.view(torch.int32)
    midpoints = ((bits >> 16) << 16) | (1 << 15)  # exactly halfway between two bfloat16 values
    specials = torch.tensor(
        [0.0, -0.0, 1e-30, -1e-30, 6e-8, 3e-8, 65504.0, 65520.0, 1e39, -1e39, float("inf")]
    )
    entries = torch.cat([values, midpoints.view(torch.float32), specials])
    method = get_method("average")
    merged = fused_merge(method, entries, [entries], TensorContext("w"), pool, out_dtype=out_dtype)
    assert same_bits(merged, entries.to(out_dtype))


def tied_state_dicts(dtype: torch.dtype, low: int, n_experts: int = 3) -> tuple[dict, list[dict]]:
    shapes = {"a.weight": (40, 9), "b.bias": (23,), "c.weight": (17, 16), "d.weight": (3, 3)}
    bases, experts = {}, [{} for _ in range(n_experts)]
    for index, (name, shape) in enumerate(shapes.items()):
        base, tensors = tied_tensors(shape, seed=10 + index, dtype=dtype, n_experts=n_experts, low=low)
        bases[name] = base
        for expert, tensor in zip(experts, tensors):
            expert[name] = tensor
    bases["position_ids"] = torch.arange(5)  # not a float: copied from the base by both paths
    for expert in experts:
        expert["position_ids"] = torch.arange(5)
    return bases, experts


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("low", [-3, -5], ids=["majority +", "majority -"])
@pytest.mark.parametrize("scope", ["global", "tensor"])
@pytest.mark.parametrize("hparams", TIES_OPTIONS[:5])
def test_merges_equal_the_reference_engine(hparams, scope, low, threads, monkeypatch):
    """Whole merges through the API, both trim scopes, bf16 with many ties at the model-wide cut."""
    monkeypatch.setattr(fused, "CHUNK_ENTRIES", 50)
    monkeypatch.setattr(blockwise, "BLOCK_ENTRIES", 64)
    base, experts = tied_state_dicts(torch.bfloat16, low)
    options = {"device": "cpu", "progress": False, "trim_scope": scope, **hparams}
    reference = api.merge(base, experts, "ties", kernel="reference", **options)
    merged = api.merge(base, experts, "ties", kernel="fused", threads=threads, **options)
    assert merged.keys() == reference.keys()
    assert all(same_bits(merged[name], reference[name]) for name in base if name != "position_ids")
    assert torch.equal(merged["position_ids"], base["position_ids"])


@pytest.mark.parametrize(("name", "hparams"), OTHER_METHODS[::2])
def test_other_merges_equal_the_reference_engine(name, hparams):
    base, experts = tied_state_dicts(torch.float16, -3)
    reference = api.merge(base, experts, name, device="cpu", progress=False, kernel="reference", **hparams)
    merged = api.merge(base, experts, name, device="cpu", progress=False, threads=2, **hparams)
    assert all(same_bits(merged[key], reference[key]) for key in base if key != "position_ids")


def test_uncovered_methods_and_dtypes_take_the_reference_path(pool):
    base, experts = tied_tensors((5, 4), seed=5, dtype=torch.float64)
    assert fused_merge(get_method("task_arithmetic"), base, experts, TensorContext("w"), pool) is None
    base, experts = tied_tensors((5, 4), seed=5)
    assert fused_merge(get_method("fisher"), base, experts, TensorContext("w"), pool) is None
    mixed = [experts[0], experts[1].float(), experts[2]]
    assert fused_merge(get_method("ties"), base, mixed, TensorContext("w", trim=None), pool) is None


def test_threads_default_to_torchs_setting_and_must_be_positive(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert resolve_threads(None) == 3
    assert resolve_threads(2) == 2
    for bad in (0, -1, 1.5, True):
        with pytest.raises(CheckpointError, match="threads"):
            resolve_threads(bad)


def test_torch_threads_follow_the_option_during_a_merge_and_come_back():
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_unknown_kernel_is_an_error():
    base, experts = tied_state_dicts(torch.float32, -3, n_experts=2)
    with pytest.raises(CheckpointError, match="kernel='numba'"):
        api.merge(base, experts, "ties", device="cpu", progress=False, kernel="numba")


class RecordingStager(SliceStager):
    """The CPU stager, logging when each slice is staged and when its values are used."""

    def __init__(self) -> None:
        super().__init__(CPU)
        self.log: list[str] = []

    def stage(self, tensors):
        self.log.append("stage")
        return super().stage(tensors)

    def values(self, staged):
        self.log.append("compute")
        return super().values(staged)


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("ties", {"trim_scope": "tensor", "density": 0.3, "sign": "count"}),
        ("task_arithmetic", {}),
        *OTHER_METHODS[-2:],
    ],
)
def test_the_device_pipeline_stages_ahead_and_equals_the_blockwise_merge(name, hparams):
    """The code path of `device=cuda` that is not CUDA-specific: slice s + 1 is staged before slice s
    computes, and the result equals the reference engine's."""
    base, experts = tied_tensors((30, 20), seed=6, low=-5)
    method = get_method(name, **hparams)
    stager = RecordingStager()
    merged = merge_pipelined(method, base, experts, TensorContext("w"), stager, block_entries=250)
    assert same_bits(merged, merge_tensor(method, base, experts, TensorContext("w"), CPU))
    if method.elementwise:  # 600 entries: three slices of 250
        assert stager.log == ["stage", "stage", "compute", "stage", "compute", "compute"]
    else:
        assert stager.log == ["stage", "compute"]


def test_eight_experts_at_an_odd_length_equal_the_reference(pool):
    """torch sums the expert stack over dim 0; past four experts its order could differ from expert order
    in the last entries of a row, which this length (not a multiple of any vector width) would show."""
    base, experts = tied_tensors((1001,), seed=7, dtype=torch.float32, n_experts=8)
    for name, hparams in [("ties", {"trim_scope": "tensor", "density": 0.3}), ("dare", {"combine": "ties"})]:
        method = get_method(name, **hparams)
        reference = merge_tensor(method, base, experts, TensorContext("w"), CPU)
        assert same_bits(fused_merge(method, base, experts, TensorContext("w"), pool), reference)


def test_the_cli_passes_threads_and_kernel(tmp_path, monkeypatch):
    from mergelab.api import cli

    captured = {}
    monkeypatch.setattr("mergelab.api.merging.merge", lambda *args, **kwargs: captured.update(kwargs))
    job = [
        "merge=ties",
        "base=/b",
        "experts=[/e1,/e2]",
        f"out={tmp_path / 'm'}",
        "threads=1",
        "kernel=reference",
    ]
    assert cli.run(job) == 0
    assert captured["threads"] == 1 and captured["kernel"] == "reference"
    assert cli.compose_job(job[:4]).kernel == "fused" and cli.compose_job(job[:4]).threads is None


@pytest.mark.parametrize(
    ("name", "hparams"), [("ties", {"trim_scope": "tensor"}), ("dare", {"combine": "ties"})]
)
@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
def test_out_dtype_is_written_directly_and_equals_the_reference(name, hparams, out_dtype):
    base, experts = tied_state_dicts(torch.bfloat16, -5)
    options = {"device": "cpu", "progress": False, "out_dtype": out_dtype, **hparams}
    reference = api.merge(base, experts, name, kernel="reference", **options)
    merged = api.merge(base, experts, name, threads=2, **options)
    for key in ("a.weight", "c.weight"):
        assert merged[key].dtype == getattr(torch, out_dtype) and same_bits(merged[key], reference[key])


def test_float64_compute_takes_the_reference_path():
    base, experts = tied_state_dicts(torch.float32, -3)
    merged = api.merge(base, experts, "task_arithmetic", device="cpu", progress=False, dtype="float64")
    expected = base["a.weight"].double() + 0.4 * sum(
        expert["a.weight"].double() - base["a.weight"].double() for expert in experts
    )
    assert torch.equal(merged["a.weight"], expected.float())
