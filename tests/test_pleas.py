"""PLeaS on tiny random Llama models: permutation recovery, partial merging widths, least-squares fit."""

from __future__ import annotations

import pytest
import torch

from mergelab.pleas import PleasOptions, pleas_merge_models
from mergelab.pleas.activations import llama_shape
from mergelab.pleas.calibration import token_batches
from mergelab.pleas.matching import align, assign
from tests.conftest import tiny_llama

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def batches():
    """Random token sequences of different lengths (so some positions are padding)."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 24, (32,), generator=generator).tolist()
    examples = [torch.randint(3, 96, (length,), generator=generator).tolist() for length in lengths]
    return token_batches(examples, 16, pad_id=0)


def logits(model, batches) -> torch.Tensor:
    """Logits at the non-padded positions of every batch."""
    with torch.no_grad():
        return torch.cat(
            [model(input_ids=ids, attention_mask=mask).logits[mask.bool()] for ids, mask in batches]
        )


def permuted_copy(model, seed: int):
    """`model` with its residual dimensions, key/value head groups and MLP units shuffled (same function).

    Written independently of mergelab.pleas.matching: rows and columns are moved by explicit index maps.
    """
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    hidden, head_dim = config.hidden_size, config.hidden_size // config.num_attention_heads
    group_heads = config.num_attention_heads // config.num_key_value_heads
    residual = torch.randperm(hidden, generator=generator)
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.clone()
        if "embed_tokens" in name or "lm_head" in name:
            tensor = tensor[:, residual]
        elif "norm" in name:
            tensor = tensor[residual]
        state[name] = tensor
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        groups = torch.randperm(config.num_key_value_heads, generator=generator)
        units = torch.randperm(config.intermediate_size, generator=generator)
        query = torch.cat(
            [torch.arange(g * group_heads * head_dim, (g + 1) * group_heads * head_dim) for g in groups]
        )
        key_value = torch.cat([torch.arange(g * head_dim, (g + 1) * head_dim) for g in groups])
        state[prefix + "self_attn.q_proj.weight"] = state[prefix + "self_attn.q_proj.weight"][query][
            :, residual
        ]
        for name in ("k_proj", "v_proj"):
            state[prefix + f"self_attn.{name}.weight"] = state[prefix + f"self_attn.{name}.weight"][
                key_value
            ][:, residual]
        state[prefix + "self_attn.o_proj.weight"] = state[prefix + "self_attn.o_proj.weight"][residual][
            :, query
        ]
        for name in ("gate_proj", "up_proj"):
            state[prefix + f"mlp.{name}.weight"] = state[prefix + f"mlp.{name}.weight"][units][:, residual]
        state[prefix + "mlp.down_proj.weight"] = state[prefix + "mlp.down_proj.weight"][residual][:, units]
    copy = type(model)(config)
    copy.load_state_dict(state)
    return copy.eval(), residual


def test_permuted_copy_computes_the_same_function(batches):
    model = tiny_llama(0).eval()
    copy, _ = permuted_copy(model, seed=1)
    assert not torch.equal(copy.model.embed_tokens.weight, model.model.embed_tokens.weight)
    torch.testing.assert_close(logits(copy, batches), logits(model, batches), atol=1e-5, rtol=1e-5)


def test_matching_recovers_the_applied_residual_permutation(batches):
    model = tiny_llama(0).eval()
    copy, residual = permuted_copy(model, seed=1)
    alignment = align(model, copy, batches, llama_shape(model))
    # copy's dimension i is model's dimension residual[i]; model's dimension j is copy's argsort(residual)[j]
    assert torch.equal(alignment.residual, residual.argsort())


@pytest.mark.parametrize("fit", ["least_squares", "none"])
def test_merging_with_a_permuted_copy_of_itself_recovers_the_model(batches, fit):
    model = tiny_llama(0).eval()
    copy, _ = permuted_copy(model, seed=1)
    merged, _ = pleas_merge_models([model, copy], batches, PleasOptions(budget=1.0, ridge=0.0, fit=fit))
    assert merged.config.intermediate_size == model.config.intermediate_size
    torch.testing.assert_close(logits(merged, batches), logits(model, batches), atol=1e-4, rtol=1e-4)


def test_linear_assignment_maximizes_total_similarity():
    similarity = torch.tensor([[1.0, 5.0, 0.0], [4.0, 4.5, 0.0], [0.0, 0.0, 2.0]])
    # 5 + 4 + 2 = 11 beats the greedy row-wise choice (5 then 4.5 is impossible: same column)
    assert assign(similarity).tolist() == [1, 0, 2]


@pytest.mark.parametrize("budget", [1.25, 1.5, 2.0])
def test_partial_merge_width_and_identical_experts_keep_the_function(batches, budget):
    model = tiny_llama(0).eval()
    merged, _ = pleas_merge_models([model, model], batches, PleasOptions(budget=budget, fit="none"))
    units = model.config.intermediate_size
    kept = round((budget - 1) * units)
    assert merged.config.intermediate_size == units + kept  # n (1 + r) for two experts
    assert merged.model.layers[0].mlp.gate_proj.weight.shape == (units + kept, model.config.hidden_size)
    torch.testing.assert_close(logits(merged, batches), logits(model, batches), atol=1e-5, rtol=1e-5)


def test_per_block_budgets_pad_narrower_blocks_with_zero_units(batches):
    model = tiny_llama(0).eval()
    merged, _ = pleas_merge_models([model, model], batches, PleasOptions(budget=[1.0, 1.5], fit="none"))
    units = model.config.intermediate_size
    assert merged.config.intermediate_size == units + units // 2
    padded = merged.model.layers[0].mlp.gate_proj.weight
    assert torch.count_nonzero(padded[units:]) == 0  # block 0 is fully merged; the rest is padding
    torch.testing.assert_close(logits(merged, batches), logits(model, batches), atol=1e-5, rtol=1e-5)


def test_least_squares_lowers_the_layer_error_below_the_permuted_average(batches):
    experts = [tiny_llama(0).eval(), tiny_llama(1).eval()]
    _, report = pleas_merge_models(experts, batches, PleasOptions(budget=1.25, ridge=0.0), compare_adam=True)
    assert len(report) == 2 * 4  # two blocks x (q/k/v, o, gate/up, down)
    for fit in report:
        assert fit.fitted_error < fit.average_error, fit
        assert fit.fitted_error <= fit.adam_error + 1e-9, fit  # the closed form is the optimum


def test_three_experts_grow_the_mlp_by_each_kept_share(batches):
    experts = [tiny_llama(seed).eval() for seed in range(3)]
    merged, report = pleas_merge_models(experts, batches, PleasOptions(budget=1.5, ridge=1e-3))
    units = experts[0].config.intermediate_size
    kept = round(0.25 * units)  # width 1 + (E - 1) r = 1.5 -> r = 0.25
    assert merged.config.intermediate_size == units - kept + 3 * kept
    assert all(fit.fitted_error < fit.average_error for fit in report)


def test_bad_budget_and_mismatched_experts_are_errors(batches):
    model = tiny_llama(0).eval()
    with pytest.raises(ValueError, match=r"budget 2.5 is outside \[1, 2\]"):
        pleas_merge_models([model, model], batches, PleasOptions(budget=2.5, fit="none"))
    with pytest.raises(ValueError, match="budget has 3 per-block widths for 2 blocks"):
        pleas_merge_models([model, model], batches, PleasOptions(budget=[1, 1, 1], fit="none"))
    other = tiny_llama(0, vocab_size=96)
    other.config.intermediate_size = 32
    with pytest.raises(ValueError, match="expert 1 has shape"):
        pleas_merge_models([model, other], batches, PleasOptions(fit="none"))


def test_error_from_sums_equals_the_direct_relative_error_and_adam_descends():
    from mergelab.pleas.fit import LeastSquaresStats

    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(200, 6, generator=generator), torch.randn(200, 3, generator=generator)
    weight = torch.randn(3, 6, generator=generator)
    stats = LeastSquaresStats()
    for rows in (slice(0, 120), slice(120, 200)):  # accumulated over two batches
        stats.update(inputs[rows], targets[rows])
    residual = inputs.double() @ weight.double().T - targets.double()
    direct = (residual**2).sum() / (targets.double() ** 2).sum()
    assert stats.error(weight) == pytest.approx(float(direct), rel=1e-9)
    best = torch.linalg.lstsq(inputs.double(), targets.double()).solution.T
    torch.testing.assert_close(stats.closed_form(ridge=0.0).double(), best)
    assert stats.error(best) < stats.error(stats.adam(weight)) < stats.error(weight)
