"""End to end: real `transformers` models merged through the CLI, reloaded and run."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

from mergelab.cli import main as cli
from tests.conftest import state_dicts
from tests.reference import paper_ties


def merge_family(family: dict, out, *options: str) -> int:
    """`mergelab merge` of a saved family's base and experts into `out`, without a progress bar."""
    experts = ",".join(str(path) for path in family["experts"])
    return cli(
        ["merge", f"base={family['base']}", f"experts=[{experts}]", f"out={out}", "progress=false", *options]
    )


def test_llama_task_arithmetic_via_cli_matches_formula(llama_family, tmp_path):
    out = tmp_path / "merged"
    code = merge_family(
        llama_family,
        out,
        "merge=task_arithmetic",
        "merge.scale=0.7",
        "device=cpu",
    )
    assert code == 0
    base, *experts_sd = state_dicts([llama_family["base"], *llama_family["experts"]])
    merged = AutoModelForCausalLM.from_pretrained(out)
    merged_sd = merged.state_dict()
    assert set(merged_sd) == set(base)
    for name in base:
        expected = base[name] + 0.7 * sum(expert[name] - base[name] for expert in experts_sd)
        torch.testing.assert_close(merged_sd[name], expected, rtol=0, atol=1e-6)
    logits = merged(torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape == (1, 4, 96) and torch.isfinite(logits).all()
    assert {"config.json", "generation_config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}


def test_llama_ties_tensor_scope_matches_paper_formula(llama_family, tmp_path):
    out = tmp_path / "ties"
    assert (
        merge_family(
            llama_family,
            out,
            "merge=ties",
            "merge.trim_scope=tensor",
            "merge.density=0.3",
            "device=cpu",
        )
        == 0
    )
    base, *experts_sd = state_dicts([llama_family["base"], *llama_family["experts"]])
    merged_sd = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name, tensor in base.items():
        expected = paper_ties(tensor.flatten(), [e[name].flatten() for e in experts_sd], 0.3).view(
            tensor.shape
        )
        torch.testing.assert_close(merged_sd[name], expected, rtol=0, atol=1e-6)


def test_t5_average_via_cli_reloads_and_generates(t5_family, tmp_path):
    out = tmp_path / "t5"
    assert (
        merge_family(
            t5_family,
            out,
            "merge=average",
            "device=cpu",
        )
        == 0
    )
    base, *experts_sd = state_dicts([t5_family["base"], *t5_family["experts"]])
    model = T5ForConditionalGeneration.from_pretrained(out)
    merged_sd = model.state_dict()
    for name in base:
        torch.testing.assert_close(merged_sd[name], sum(e[name] for e in experts_sd) / 2, rtol=0, atol=1e-6)
    outputs = model(input_ids=torch.tensor([[5, 6, 7]]), decoder_input_ids=torch.tensor([[0, 5]]))
    assert outputs.logits.shape == (1, 2, 96)


def test_bfloat16_checkpoint_keeps_dtype_and_computes_in_float32(tmp_path):
    from tests.conftest import save_family, tiny_llama

    family = save_family(tmp_path, tiny_llama(seed=3).to(torch.bfloat16), 2)
    out = tmp_path / "merged"
    assert (
        merge_family(
            family,
            out,
            "merge=task_arithmetic",
            "merge.scale=0.5",
        )
        == 0
    )
    base, *experts_sd = state_dicts([family["base"], *family["experts"]])
    (merged,) = state_dicts([out])
    for name, tensor in base.items():
        assert merged[name].dtype == torch.bfloat16
        expected = (
            tensor.float() + 0.5 * sum(e[name].float() - tensor.float() for e in experts_sd)
        ).bfloat16()
        assert torch.equal(merged[name], expected)
