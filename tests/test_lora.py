"""LoRA adapters as experts: real `peft` adapters on small `transformers` models, checked against PEFT's own
`merge_and_unload` (the full expert each adapter stands for)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mergelab
from mergelab.engine.checkpoint import CheckpointError, open_checkpoint
from mergelab.engine.lora import LoraCheckpoint

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=48,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(config)


def save_adapter(base_dir: Path, out: Path, seed: int, **lora_options) -> Path:
    """A LoRA adapter with random (nonzero) factors, and its modules_to_save copies moved off the base."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    config = peft.LoraConfig(init_lora_weights=False, **lora_options)
    adapted = peft.get_peft_model(model, config)
    for name, parameter in adapted.named_parameters():
        if "modules_to_save" in name:
            parameter.data += 0.1 * torch.randn_like(parameter)
    adapted.save_pretrained(out)
    return out


def unloaded_state_dict(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The full expert an adapter stands for, as PEFT merges it."""
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    merged = peft.PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return {name: tensor.detach().clone() for name, tensor in merged.state_dict().items()}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base_dir = root / "base"
    tiny_llama().save_pretrained(base_dir)
    adapters = [
        save_adapter(base_dir, root / "attention", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        save_adapter(
            base_dir,
            root / "mlp_rslora",
            2,
            r=4,
            lora_alpha=6,
            use_rslora=True,
            target_modules=["up_proj", "down_proj", "embed_tokens"],
            alpha_pattern={"down_proj": 2},
            rank_pattern={"up_proj": 2},
            modules_to_save=["lm_head"],
        ),
    ]
    return base_dir, adapters


def test_adapter_reads_as_the_expert_peft_merges(family):
    base_dir, adapters = family
    base = open_checkpoint(base_dir, "base")
    for adapter in adapters:
        expected = unloaded_state_dict(base_dir, adapter)
        expert = LoraCheckpoint(adapter, base, "expert")
        assert set(expert.infos()) == set(base.infos())
        changed = 0
        for name in sorted(base.infos()):
            value = expert.get(name)
            torch.testing.assert_close(value.float(), expected[name].float(), rtol=0, atol=2e-6)
            changed += not torch.equal(value.float(), base.get(name).float())
        assert changed >= 4  # the adapter did change the weights it targets


@pytest.mark.parametrize("method, hparams", [("task_arithmetic", {"scale": 1.0}), ("ties", {"density": 0.5})])
def test_merging_adapters_equals_merging_their_full_experts(family, method, hparams):
    base_dir, adapters = family
    full = [unloaded_state_dict(base_dir, adapter) for adapter in adapters]
    from_adapters = mergelab.merge(base_dir, adapters, method, device="cpu", progress=False, **hparams)
    from_full = mergelab.merge(base_dir, full, method, device="cpu", progress=False, **hparams)
    assert set(from_adapters) == set(from_full)
    for name in from_full:
        torch.testing.assert_close(from_adapters[name], from_full[name], rtol=0, atol=2e-6)


def test_merged_adapters_write_a_loadable_checkpoint(family, tmp_path):
    base_dir, adapters = family
    out = mergelab.merge(
        base_dir, adapters, "task_arithmetic", out=tmp_path / "merged", scale=0.5, progress=False
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 48) and torch.isfinite(logits).all()


def test_conv1d_adapter_transposes_its_delta(tmp_path):
    """GPT-2's Conv1D stores weights (in, out): PEFT sets fan_in_fan_out and so must the delta."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    base_dir = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(base_dir)
    adapter = save_adapter(
        base_dir, tmp_path / "c_attn", 3, r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True
    )
    expected = unloaded_state_dict(base_dir, adapter)
    expert = LoraCheckpoint(adapter, open_checkpoint(base_dir, "base"), "expert")
    name = "transformer.h.0.attn.c_attn.weight"
    torch.testing.assert_close(expert.get(name), expected[name], rtol=0, atol=2e-6)


def test_unsupported_and_mismatched_adapters_are_named(family, tmp_path):
    base_dir, adapters = family
    dora = tmp_path / "dora"
    dora.mkdir()
    config = json.loads((adapters[0] / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (dora / "adapter_model.safetensors").write_bytes((adapters[0] / "adapter_model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="DoRA"):
        mergelab.merge(base_dir, [dora], "task_arithmetic", progress=False)

    other_base = tmp_path / "other"
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2)
    ).save_pretrained(other_base)
    with pytest.raises(CheckpointError, match="q_proj.weight', which the base lacks"):
        mergelab.merge(other_base, [adapters[0]], "task_arithmetic", progress=False)

    with pytest.raises(CheckpointError, match="merges whole models, not LoRA adapters"):
        mergelab.merge(base_dir, adapters, "pleas", progress=False)
