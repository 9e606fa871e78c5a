"""Shared fixtures: tiny real `transformers` models (a base and experts fine-tuned from it) on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.zoo_fixture import micro_zoo  # noqa: F401  (one micro zoo per test session)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture
def single_torch_thread():
    """One intra-op thread for many tiny forward passes: more threads only oversubscribe a shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama(seed: int = 0, vocab_size: int = 96, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)


def tiny_t5(seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=96,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(config)


def fine_tune_like(model, seed: int, noise: float = 0.02):
    """A copy of `model` with seeded perturbations standing in for fine-tuning."""
    expert = type(model)(model.config)
    expert.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in expert.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * noise)
    return expert


def save_bin(model, path: Path, n_shards: int = 1) -> None:
    """Save `model` as `.bin` weights the way older `transformers` did (recent versions write only safetensors):
    `pytorch_model.bin`, or `n_shards` files with a `pytorch_model.bin.index.json`."""
    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(path)
    state_dict = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    if n_shards == 1:
        torch.save(state_dict, path / "pytorch_model.bin")
        return
    names = sorted(state_dict)
    weight_map = {}
    for index in range(n_shards):
        file_name = f"pytorch_model-{index + 1:05d}-of-{n_shards:05d}.bin"
        shard = {name: state_dict[name] for name in names[index::n_shards]}
        torch.save(shard, path / file_name)
        weight_map.update(dict.fromkeys(shard, file_name))
    index_json = {"metadata": {}, "weight_map": weight_map}
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(index_json))


def save_family(root: Path, base, n_experts: int, expert_formats: tuple[str, ...] = ()) -> dict:
    """Save base and experts under `root`; `expert_formats[i]` is 'sharded', 'bin' or 'single'."""
    base.save_pretrained(root / "base")
    experts = []
    for index in range(n_experts):
        expert = fine_tune_like(base, seed=100 + index)
        fmt = expert_formats[index] if index < len(expert_formats) else "single"
        path = root / f"expert{index}"
        if fmt == "sharded":
            expert.save_pretrained(path, max_shard_size="20KB")
        elif fmt == "bin":
            save_bin(expert, path)
        else:
            expert.save_pretrained(path)
        experts.append(path)
    return {"base": root / "base", "experts": experts}


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory) -> dict:
    """A tiny Llama base and three experts: one sharded, one `.bin`, one single safetensors file."""
    root = tmp_path_factory.mktemp("llama")
    return save_family(root, tiny_llama(), 3, ("sharded", "bin", "single"))


@pytest.fixture(scope="session")
def t5_family(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("t5")
    return save_family(root, tiny_t5(), 2)


def state_dicts(paths) -> list[dict[str, torch.Tensor]]:
    """Every tensor of each checkpoint, read independently of mergelab."""
    from safetensors.torch import load_file

    loaded = []
    for path in paths:
        tensors: dict[str, torch.Tensor] = {}
        for file in sorted(Path(path).glob("*.safetensors")):
            tensors.update(load_file(file))
        for file in sorted(Path(path).glob("*.bin")):
            tensors.update(torch.load(file, weights_only=True))
        loaded.append(tensors)
    return loaded
