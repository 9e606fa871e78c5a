"""The newer merge methods (slerp, breadcrumbs, della, model_stock, tsv, iso_c): cases worked out by hand,
independent re-implementations of the papers' formulas (`tests/reference.py`), bad options, and end-to-end
merges through `mergelab.merge`, including tensors larger than the engine's slice size."""

from __future__ import annotations

import math

import pytest
import torch

import mergelab
from mergelab.engine import blockwise
from mergelab.engine.blockwise import merge_blockwise
from mergelab.methods import MergeConfigError, TensorContext, get_method
from mergelab.methods.breadcrumbs import breadcrumbs_mask
from mergelab.methods.dare import mask_seed
from mergelab.methods.della import keep_probabilities
from tests.reference import (
    paper_breadcrumbs,
    paper_della,
    paper_iso_c,
    paper_model_stock,
    paper_slerp,
    paper_tsv,
)

CTX = TensorContext(name="layer.weight")
CPU = torch.device("cpu")
NEW_METHODS = ("slerp", "breadcrumbs", "della", "model_stock", "tsv", "iso_c")


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def random_family(
    n_experts: int, shape: tuple[int, ...], seed: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator)
    return base, [base + 0.5 * torch.randn(shape, generator=generator) for _ in range(n_experts)]


def della_uniforms(seed: int, name: str, n_experts: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    """The uniform draws DELLA's masks come from: a CPU generator per (seed, expert index, tensor name)."""
    return [
        torch.rand(shape, generator=torch.Generator().manual_seed(mask_seed(seed, index, name)))
        for index in range(n_experts)
    ]


# --- slerp ---


def test_slerp_hand_cases():
    slerp = get_method("slerp", t=0.5)
    # Orthogonal unit vectors: theta = pi/2, both weights sin(pi/4) = sqrt(2)/2.
    half = math.sqrt(2) / 2
    assert torch.allclose(slerp.merge(t(9, 9), [t(1, 0), t(0, 1)], CTX), t(half, half))
    # Different norms, still orthogonal: sin(pi/4) * (2, 0) + sin(pi/4) * (0, 1).
    assert torch.allclose(slerp.merge(t(0, 0), [t(2, 0), t(0, 1)], CTX), t(2 * half, half))
    # t = 1/3 on orthogonal unit vectors: sin(pi/3) = sqrt(3)/2 and sin(pi/6) = 1/2.
    third = get_method("slerp", t=1 / 3).merge(t(0, 0), [t(1, 0), t(0, 1)], CTX)
    assert torch.allclose(third, t(math.sqrt(3) / 2, 0.5))
    # Near-parallel: cos = 2 / sqrt(4.0001) = 0.9999875 > 0.9995, so linear interpolation.
    assert torch.allclose(slerp.merge(t(0, 0), [t(1, 0), t(2, 0.01)], CTX), t(1.5, 0.005))


def test_slerp_ends_are_the_experts_and_the_base_is_unused():
    base, experts = random_family(2, (4, 3), seed=0)
    assert torch.equal(get_method("slerp", t=0.0).merge(base, experts, CTX), experts[0])
    assert torch.allclose(get_method("slerp", t=1.0).merge(base, experts, CTX), experts[1])
    midpoint = get_method("slerp").merge(base, experts, CTX)
    assert torch.equal(get_method("slerp").merge(torch.zeros_like(base), experts, CTX), midpoint)


def test_slerp_of_unit_vectors_is_a_rotation_and_matches_shoemake():
    generator = torch.Generator().manual_seed(1)
    start, end = torch.randn(50, generator=generator), torch.randn(50, generator=generator)
    start, end = start / start.norm(), end / end.norm()
    theta = math.acos(float(start @ end))
    across = (end - (start @ end) * start) / (end - (start @ end) * start).norm()
    for fraction in (0.1, 0.5, 0.8):
        merged = get_method("slerp", t=fraction).merge(torch.zeros(50), [start, end], CTX)
        rotation = math.cos(fraction * theta) * start + math.sin(fraction * theta) * across
        assert torch.allclose(merged, rotation, atol=1e-6)
    base, experts = random_family(2, (7, 5), seed=2)
    for fraction in (0.0, 0.3, 0.75):
        merged = get_method("slerp", t=fraction).merge(base, experts, CTX)
        assert torch.allclose(merged, paper_slerp(fraction, *experts), atol=1e-5)


def test_slerp_needs_exactly_two_experts():
    with pytest.raises(MergeConfigError, match="method 'slerp' interpolates exactly 2 experts, got 3"):
        get_method("slerp").merge(t(0), [t(1), t(2), t(3)], CTX)


# --- breadcrumbs ---


def test_breadcrumbs_hand_case_linear():
    base = torch.ones(10)
    # Expert 1's |tau| ranks 9, 8, 7, 6, ...: density 0.3 keeps 3 of 10 after the top int(0.1 * 10) = 1,
    # so -9 goes (outlier), -8, 7 and 6 stay, everything smaller goes.
    tau_1 = t(1, -9, 3, 7, -2, 5, 0.5, 4, -8, 6)
    # Expert 2: 10 goes, -4, 3 and 2 stay.
    tau_2 = t(2, 1, -1, 0, 3, 0, -4, 10, 0, 0.5)
    merged = get_method("breadcrumbs", density=0.3, gamma=0.1, scale=0.5).merge(
        base, [base + tau_1, base + tau_2], CTX
    )
    sparse_sum = t(2, 0, 0, 7, 3, 0, -4, 0, -8, 6)
    assert torch.allclose(merged, base + 0.5 * sparse_sum)


def test_breadcrumbs_ties_combine_elects_signs():
    base = torch.zeros(4)
    # density 0.5 keeps 2 of 4 after the top 1: expert 1 (4, -3, 2, 1) -> (0, -3, 2, 0);
    # expert 2 (-1, 5, -2.5, 0.5) -> (-1, 0, -2.5, 0). Votes (-1, -3, -0.5, 0): entry 2 elects -, so
    # expert 1's +2 is dropped there; entries are summed (mergekit's breadcrumbs_ties, normalize false).
    experts = [t(4, -3, 2, 1), t(-1, 5, -2.5, 0.5)]
    linear = get_method("breadcrumbs", density=0.5, gamma=0.25).merge(base, experts, CTX)
    ties = get_method("breadcrumbs", density=0.5, gamma=0.25, combine="ties").merge(base, experts, CTX)
    assert torch.equal(linear, t(-1, -3, -0.5, 0))
    assert torch.equal(ties, t(-1, -3, -2.5, 0))


def test_breadcrumbs_and_della_weights_apply_after_election():
    base, experts = t(0), [t(3), t(-2)]  # one entry, density 1: nothing is dropped; the sum elects +
    ties = get_method("breadcrumbs", density=1.0, combine="ties", weights=[1, 10]).merge(base, experts, CTX)
    linear = get_method("breadcrumbs", density=1.0, weights=[1, 10]).merge(base, experts, CTX)
    assert torch.equal(ties, t(3)) and torch.equal(linear, t(3 - 20))
    # DELLA's disjoint mean is weighted: (1 * 2 + 3 * 6) / (1 + 3) = 5.
    della = get_method("della", density=1.0, epsilon=0.0, weights=[1, 3]).merge(t(0), [t(2), t(6)], CTX)
    assert torch.equal(della, t(5))


def test_breadcrumbs_mask_ties_and_budget_overflow():
    # Three tied 3s: the first in flattened order is the outlier, the next two are kept.
    mask = breadcrumbs_mask(t(3, 3, 3, 1, 0), density=0.4, gamma=0.2)
    assert mask.tolist() == [False, True, True, False, False]
    # density 0.75 keeps 3 of 4, so only 1 outlier can go although int(0.5 * 4) = 2 (mergekit's rule).
    assert breadcrumbs_mask(t(4, 3, 2, 1), density=0.75, gamma=0.5).tolist() == [False, True, True, True]
    # Tensors under 1 / gamma entries lose no outlier and keep their density fraction.
    assert breadcrumbs_mask(t(4, 3, 2, 1), density=0.5, gamma=0.01).tolist() == [True, True, False, False]


def test_breadcrumbs_matches_sorting_reference():
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(9, 13, generator=generator)
    # Task vectors on a coarse grid, so many magnitudes tie at the cuts.
    experts = [base + torch.randint(-4, 5, base.shape, generator=generator) / 4 for _ in range(3)]
    for density, gamma in ((0.1, 0.01), (0.3, 0.05), (0.5, 0.2), (0.9, 0.2), (1.0, 0.1)):
        merged = get_method("breadcrumbs", density=density, gamma=gamma, scale=0.7).merge(base, experts, CTX)
        assert torch.allclose(merged, paper_breadcrumbs(base, experts, density, gamma, 0.7), atol=1e-6)


# --- della ---


def test_della_keep_probabilities_by_rank_within_rows():
    # Ranks of |(0.5, -3, 1, 2)| are 0, 3, 1, 2; p = 0.5 - 0.3 + 0.6 * rank / 3 = 0.2 + 0.2 * rank.
    assert torch.allclose(keep_probabilities(t(0.5, 3, 1, 2), 0.5, 0.3), t(0.2, 0.8, 0.4, 0.6))
    # Each row of a matrix is ranked on its own: width 2 gives 0.4 (smaller) and 0.6 (larger).
    rows = keep_probabilities(torch.tensor([[1.0, 2.0], [4.0, 3.0]]), 0.5, 0.1)
    assert torch.allclose(rows, torch.tensor([[0.4, 0.6], [0.6, 0.4]]))
    # Equal magnitudes rank by position; a one-entry row keeps with probability density.
    assert torch.allclose(keep_probabilities(t(1, 1, 1), 0.5, 0.2), t(0.3, 0.5, 0.7))
    assert torch.allclose(keep_probabilities(t(7), 0.5, 0.2), t(0.5))


def test_della_survivors_are_rescaled_by_their_own_probability():
    method = get_method("della", density=0.5, epsilon=0.2, seed=4)
    tau = t(1, -2, 3, -4, 5)  # ranks 0..4: p = 0.3, 0.4, 0.5, 0.6, 0.7
    expected_if_kept = tau / t(0.3, 0.4, 0.5, 0.6, 0.7)
    sparse = method.sparse_task_vectors(torch.zeros(5), [tau.clone()], "w")[0]
    kept = sparse != 0
    assert torch.allclose(sparse[kept], expected_if_kept[kept])
    # Keep rates follow the ranks: 20000 rows of width 5, each rank kept at its probability.
    many = torch.arange(1.0, 6.0).repeat(20_000, 1)
    rates = (method.sparse_task_vectors(torch.zeros_like(many), [many.clone()], "m")[0] != 0).float().mean(0)
    assert torch.allclose(rates, t(0.3, 0.4, 0.5, 0.6, 0.7), atol=0.015)


def test_della_without_drop_is_ties_disjoint_mean_and_scale():
    base = t(1, 1)
    experts = [t(5, 0), t(0, -2)]  # task vectors (4, -1), (-1, -3): votes (3, -4) elect (+, -)
    merged = get_method("della", density=1.0, epsilon=0.0, scale=0.5).merge(base, experts, CTX)
    assert torch.equal(merged, t(1 + 0.5 * 4, 1 + 0.5 * -2))
    linear = get_method("della", density=1.0, epsilon=0.0, combine="linear").merge(base, experts, CTX)
    assert torch.equal(linear, t(1 + 3, 1 - 4))


def test_della_matches_reference_with_the_same_draws():
    base, experts = random_family(3, (6, 11), seed=5)
    for density, epsilon in ((0.3, 0.15), (0.6, 0.3), (0.5, 0.0)):
        method = get_method("della", density=density, epsilon=epsilon, scale=1.2, seed=9)
        merged = method.merge(base, experts, TensorContext("blocks.0.w"))
        uniforms = della_uniforms(9, "blocks.0.w", 3, (6, 11))
        assert torch.allclose(merged, paper_della(base, experts, density, epsilon, 1.2, uniforms), atol=1e-5)


def test_della_masks_depend_on_seed_expert_and_name_only():
    method = get_method("della", density=0.5, epsilon=0.1, seed=7)
    base, expert = torch.zeros(64), torch.linspace(-1, 1, 64)
    first = method.sparse_task_vectors(base, [expert, expert], "x")
    assert torch.equal(first, method.sparse_task_vectors(base, [expert, expert], "x"))
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first, method.sparse_task_vectors(base, [expert, expert], "y"))
    assert not torch.equal(
        first, get_method("della", density=0.5, epsilon=0.1).sparse_task_vectors(base, [expert, expert], "x")
    )


# --- model_stock ---


def test_model_stock_hand_cases():
    method = get_method("model_stock")
    # Orthogonal task vectors: cos 0, t = 0, the base is kept.
    assert torch.equal(method.merge(t(0, 0), [t(1, 0), t(0, 1)], CTX), t(0, 0))
    # Equal task vectors: cos 1, t = 2 / (1 + 1) = 1, the experts' average.
    assert torch.allclose(method.merge(t(1, 1), [t(3, 1), t(3, 1)], CTX), t(3, 1))
    # Task vectors (1, 0) and (1/2, sqrt(3)/2): cos 1/2, t = 2 * 1/2 / (1 + 1/2) = 2/3, so
    # base + 2/3 * (mean task vector (3/4, sqrt(3)/4)) = (1.5, 1 + sqrt(3)/6).
    root3 = math.sqrt(3)
    merged = method.merge(t(1, 1), [t(2, 1), t(1.5, 1 + root3 / 2)], CTX)
    assert torch.allclose(merged, t(1.5, 1 + root3 / 6))
    # Opposite task vectors: cos -1 clamps to 0, the base is kept.
    assert torch.equal(method.merge(t(1, 1), [t(2, 1), t(0, 1)], CTX), t(1, 1))


def test_model_stock_matches_paper_formula():
    for n_experts, seed in ((2, 6), (3, 7), (5, 8)):
        generator = torch.Generator().manual_seed(seed)
        base = torch.randn(8, 5, generator=generator)
        shared = torch.randn(8, 5, generator=generator)  # a common direction gives cos well above 0
        experts = [base + shared + 0.7 * torch.randn(8, 5, generator=generator) for _ in range(n_experts)]
        merged = get_method("model_stock").merge(base, experts, CTX)
        assert torch.allclose(merged, paper_model_stock(base, experts), atol=1e-6)


def test_model_stock_needs_two_experts():
    with pytest.raises(MergeConfigError, match="method 'model_stock' needs at least 2 experts, got 1"):
        get_method("model_stock").merge(t(0), [t(1)], CTX)


# --- tsv ---


def test_tsv_hand_case_decorrelates_singular_vectors():
    # N = 2 experts on 2 x 2: each keeps its top 1 component. tau_1 = diag(3, 1) keeps 3 e1 e1^T;
    # tau_2 = 2 u e2^T with u = (1, 1)/sqrt(2). U = [e1, u] has columns 45 degrees apart; its nearest
    # orthonormal matrix spreads them symmetrically, to -22.5 and 67.5 degrees; V = [e1, e2] is already
    # orthonormal. Result: [[3c, 2s], [-3s, 2c]] with c = cos(pi/8), s = sin(pi/8).
    root2 = math.sqrt(2)
    tau_1 = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    tau_2 = torch.tensor([[0.0, root2], [0.0, root2]])
    merged = get_method("tsv").merge(torch.zeros(2, 2), [tau_1, tau_2], CTX)
    c, s = math.cos(math.pi / 8), math.sin(math.pi / 8)
    assert torch.allclose(merged, torch.tensor([[3 * c, 2 * s], [-3 * s, 2 * c]]), atol=1e-6)


def test_tsv_one_dimensional_tensors_take_the_mean_task_vector():
    merged = get_method("tsv", scale=0.5).merge(t(1, 1), [t(2, 3), t(4, -1)], CTX)  # mean tau (2, 0)
    assert torch.allclose(merged, t(2, 1))


def test_tsv_low_rank_task_matrices_ignore_zero_components():
    # Rank-1 task matrices with orthogonal singular vectors: nothing to decorrelate, TSV is their sum.
    # Each task may keep 2 components (4 // 2), but the second has singular value 0 and arbitrary vectors.
    tau_1 = torch.zeros(4, 4)
    tau_1[0, 0] = 3.0
    tau_2 = torch.zeros(4, 4)
    tau_2[1, 2] = 2.0
    merged = get_method("tsv").merge(torch.zeros(4, 4), [tau_1, tau_2], CTX)
    assert torch.allclose(merged, tau_1 + tau_2, atol=1e-6)


def test_tsv_matches_authors_padded_formulation():
    for n_experts, shape in ((2, (6, 4)), (3, (5, 9)), (4, (8, 8))):
        base, experts = random_family(n_experts, shape, seed=10 + n_experts)
        merged = get_method("tsv", scale=0.8).merge(base, experts, CTX)
        assert torch.allclose(merged, paper_tsv(base, experts, 0.8), atol=1e-5)


# --- iso_c ---


def test_iso_c_hand_cases():
    # M = diag(2, -1) = I diag(2, 1) diag(1, -1): sigma_bar = 1.5, U V^T = diag(1, -1).
    tau_1 = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    tau_2 = torch.tensor([[0.0, 0.0], [0.0, -1.0]])
    merged = get_method("iso_c", scale=2.0).merge(torch.ones(2, 2), [1 + tau_1, 1 + tau_2], CTX)
    assert torch.allclose(merged, 1 + 2.0 * torch.tensor([[1.5, 0.0], [0.0, -1.5]]))
    # Rank-deficient M = diag(2, 0): sigma_bar = (2 + 0) / 2 = 1 on the one nonzero direction only.
    same = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(get_method("iso_c").merge(torch.zeros(2, 2), [same, same], CTX), same)
    # 1-D tensors: the mean task vector (2, 0).
    assert torch.allclose(get_method("iso_c", scale=0.5).merge(t(1, 1), [t(2, 3), t(4, -1)], CTX), t(2, 1))


def test_iso_c_matches_paper_formula():
    for n_experts, shape in ((2, (7, 4)), (4, (6, 10))):
        base, experts = random_family(n_experts, shape, seed=20 + n_experts)
        merged = get_method("iso_c", scale=1.3).merge(base, experts, CTX)
        assert torch.allclose(merged, paper_iso_c(base, experts, 1.3), atol=1e-5)


# --- options ---


@pytest.mark.parametrize(
    ("name", "hparams", "message"),
    [
        ("slerp", {"t": 1.5}, "method 'slerp': t=1.5 must be in [0, 1]"),
        ("slerp", {"t": "half"}, "method 'slerp': t='half' must be a finite number"),
        ("breadcrumbs", {"density": 0.0}, "method 'breadcrumbs': density=0.0 must be in (0, 1]"),
        ("breadcrumbs", {"gamma": -0.1}, "method 'breadcrumbs': gamma=-0.1 must be in [0, 1]"),
        (
            "breadcrumbs",
            {"combine": "mean"},
            "method 'breadcrumbs': combine='mean' is not one of ['linear', 'ties']",
        ),
        ("breadcrumbs", {"weights": "1,2"}, "method 'breadcrumbs': weights='1,2' must be a list of numbers"),
        (
            "della",
            {"epsilon": 0.4},
            "method 'della': epsilon=0.4 must leave keep probabilities density - epsilon > 0",
        ),
        ("della", {"density": 1.2}, "method 'della': density=1.2 must be in (0, 1]"),
        ("della", {"seed": 1.5}, "method 'della': seed=1.5 must be an integer"),
        ("della", {"scale": True}, "method 'della': scale=True must be a finite number"),
        ("model_stock", {"t": 0.5}, "unknown hyperparameter(s) ['t'] for method 'model_stock'; valid: []"),
        ("tsv", {"scale": "big"}, "method 'tsv': scale='big' must be a finite number"),
        ("iso_c", {"scale": float("nan")}, "method 'iso_c': scale=nan must be a finite number"),
    ],
)
def test_bad_options_are_named(name, hparams, message):
    with pytest.raises(MergeConfigError) as error:
        get_method(name, **hparams)
    assert message in str(error.value)


# --- end to end through mergelab.merge ---


def state_dict_family(n_experts: int, seed: int, rows: int = 8) -> tuple[dict, list[dict]]:
    """A base state dict (a matrix, a bias, an integer buffer) and experts fine-tuned from it."""
    generator = torch.Generator().manual_seed(seed)
    base = {
        "layer.weight": torch.randn(rows, 6, generator=generator),
        "layer.bias": torch.randn(rows, generator=generator),
        "position_ids": torch.arange(5),
    }
    shared = 0.3 * torch.randn(rows, 6, generator=generator)  # a common direction: model stock's cos > 0
    experts = []
    for _ in range(n_experts):
        expert = {name: value.clone() for name, value in base.items()}
        expert["layer.weight"] = (
            base["layer.weight"] + shared + 0.3 * torch.randn(rows, 6, generator=generator)
        )
        expert["layer.bias"] = base["layer.bias"] + 0.3 * torch.randn(rows, generator=generator)
        experts.append(expert)
    return base, experts


def expected_by_reference(name: str, base: dict, experts: list[dict], hparams: dict) -> dict:
    """Each float tensor merged by the independent re-implementation of the method's formula."""
    result = {"position_ids": base["position_ids"]}
    for key in ("layer.weight", "layer.bias"):
        values = [expert[key] for expert in experts]
        if name == "slerp":
            result[key] = paper_slerp(hparams["t"], *values)
        elif name == "breadcrumbs":
            result[key] = paper_breadcrumbs(
                base[key], values, hparams["density"], hparams["gamma"], hparams["scale"]
            )
        elif name == "della":
            uniforms = della_uniforms(hparams["seed"], key, len(values), base[key].shape)
            result[key] = paper_della(
                base[key], values, hparams["density"], hparams["epsilon"], hparams["scale"], uniforms
            )
        elif name == "model_stock":
            result[key] = paper_model_stock(base[key], values)
        elif name == "tsv":
            result[key] = paper_tsv(base[key], values, hparams["scale"])
        else:
            result[key] = paper_iso_c(base[key], values, hparams["scale"])
    return result


END_TO_END = [
    ("slerp", 2, {"t": 0.3}),
    ("breadcrumbs", 3, {"density": 0.4, "gamma": 0.05, "scale": 0.6}),
    ("della", 3, {"density": 0.4, "epsilon": 0.2, "scale": 1.1, "seed": 3}),
    ("model_stock", 3, {}),
    ("tsv", 3, {"scale": 0.9}),
    ("iso_c", 3, {"scale": 1.4}),
]


@pytest.mark.parametrize(("name", "n_experts", "hparams"), END_TO_END)
def test_merge_state_dicts_end_to_end(name, n_experts, hparams):
    base, experts = state_dict_family(n_experts, seed=30)
    merged = mergelab.merge(base, experts, name, device="cpu", progress=False, **hparams)
    expected = expected_by_reference(name, base, experts, hparams)
    assert set(merged) == set(base)
    assert torch.equal(merged["position_ids"], base["position_ids"])
    for key in ("layer.weight", "layer.bias"):
        assert merged[key].dtype == torch.float32
        assert torch.allclose(merged[key], expected[key], atol=1e-5), key


@pytest.mark.parametrize(("name", "n_experts"), [("slerp", 3), ("slerp", 1), ("model_stock", 1)])
def test_expert_count_is_checked_before_anything_is_written(name, n_experts, tmp_path):
    base, experts = state_dict_family(n_experts, seed=31)
    out = tmp_path / "merged"
    with pytest.raises(MergeConfigError, match=f"got {n_experts}"):
        mergelab.merge(base, experts, name, out=out, device="cpu", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "n_experts", "hparams"), END_TO_END)
def test_engine_hands_whole_tensors_larger_than_a_slice(name, n_experts, hparams, monkeypatch):
    """The engine slices tensors above `blockwise.BLOCK_ENTRIES` only for elementwise methods; with the slice
    size cut to 16 entries, the 48-entry matrix must still reach these methods whole."""
    base, experts = state_dict_family(n_experts, seed=32)
    method = get_method(name, **hparams)
    assert not method.elementwise
    monkeypatch.setattr(blockwise, "BLOCK_ENTRIES", 16)
    merged = mergelab.merge(base, experts, name, device="cpu", progress=False, **hparams)
    for key in ("layer.weight", "layer.bias"):
        values = [expert[key] for expert in experts]
        whole = method.merge(base[key].clone(), [value.clone() for value in values], TensorContext(key))
        assert torch.equal(merged[key], whole), key
    # Slicing would have changed the matrix: the test can tell a sliced merge from a whole one.
    weight = TensorContext("layer.weight")
    sliced = merge_blockwise(
        method, base["layer.weight"], [e["layer.weight"] for e in experts], weight, CPU, 16
    )
    assert not torch.allclose(sliced, merged["layer.weight"], atol=1e-4)


def test_model_stock_merges_a_tensor_above_the_real_slice_size_whole():
    rows = blockwise.BLOCK_ENTRIES // 1024 + 1  # (rows x 1024) is just over one slice
    generator = torch.Generator().manual_seed(33)
    base = {"w": torch.randn(rows, 1024, generator=generator)}
    shared = torch.randn(rows, 1024, generator=generator)
    experts = [{"w": base["w"] + shared + torch.randn(rows, 1024, generator=generator)} for _ in range(2)]
    merged = mergelab.merge(base, experts, "model_stock", device="cpu", progress=False)
    assert torch.allclose(merged["w"], paper_model_stock(base["w"], [e["w"] for e in experts]), atol=1e-5)


@pytest.mark.parametrize("name", NEW_METHODS)
def test_merged_llama_checkpoint_loads_and_runs(name, llama_family, tmp_path):
    """A real `transformers` checkpoint through the engine: written, reloaded, and equal per tensor to the
    method applied directly to the checkpoints' tensors."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import state_dicts

    experts = llama_family["experts"][:2]
    out = mergelab.merge(
        llama_family["base"], experts, name, out=tmp_path / name, device="cpu", progress=False
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    logits = model(torch.tensor([[1, 5, 9, 2]])).logits
    assert torch.isfinite(logits).all()
    base, *expert_sds = state_dicts([llama_family["base"], *experts])
    merged = state_dicts([out])[0]
    method = get_method(name)
    changed = 0
    for key, value in base.items():
        direct = method.merge(value.float(), [sd[key].float() for sd in expert_sds], TensorContext(key))
        assert torch.allclose(merged[key].float(), direct, atol=1e-6), key
        changed += int(not torch.equal(merged[key], value))
    assert changed > 0
