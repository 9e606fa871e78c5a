"""The default job of `make run`: merge a small real checkpoint with every method and print a summary.

It builds (once, seeded) a tiny Llama base and four experts perturbed from it under
`$MERGELAB_HOME/demo`, merges them with each method's paper defaults through the engine, and prints, per
method, the merge time and how the merged update relates to the experts' task vectors.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from mergelab.api import merge_with_report
from mergelab.methods import METHODS

N_EXPERTS = 4


def mergelab_home() -> Path:
    return Path(os.environ.get("MERGELAB_HOME", Path.home() / ".cache" / "mergelab"))


def build_demo_checkpoints(root: Path) -> tuple[Path, list[Path]]:
    """A tiny Llama base and experts whose task vectors share a common direction plus their own noise."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base_path, expert_paths = root / "base", [root / f"expert{i}" for i in range(N_EXPERTS)]
    if all((path / "config.json").exists() for path in (base_path, *expert_paths)):
        return base_path, expert_paths
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    base = LlamaForCausalLM(config)
    base.save_pretrained(base_path)
    shared = {name: torch.randn_like(tensor) * 0.01 for name, tensor in base.state_dict().items()}
    for index, path in enumerate(expert_paths):
        expert = LlamaForCausalLM(config)
        generator = torch.Generator().manual_seed(index + 1)
        state = {
            name: tensor + shared[name] + torch.randn(tensor.shape, generator=generator) * 0.01
            for name, tensor in base.state_dict().items()
        }
        expert.load_state_dict(state)
        expert.save_pretrained(path)
    return base_path, expert_paths


def flat(state_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state_dict[name].float().flatten() for name in sorted(state_dict)])


def main(argv: list[str]) -> int:
    from safetensors.torch import load_file

    base_path, expert_paths = build_demo_checkpoints(mergelab_home() / "demo")
    base = flat(load_file(base_path / "model.safetensors"))
    task_vectors = [flat(load_file(path / "model.safetensors")) - base for path in expert_paths]
    mean_task_vector = torch.stack(task_vectors).mean(0)
    print(f"{'method':<16}{'seconds':>9}{'|update|/|mean tau|':>22}{'cos(update, mean tau)':>24}")
    with tempfile.TemporaryDirectory() as scratch:
        for name in METHODS:
            out = Path(scratch) / name
            _, report = merge_with_report(base_path, expert_paths, name, out, device="auto", progress=False)
            update = flat(load_file(out / "model.safetensors")) - base
            ratio = (update.norm() / mean_task_vector.norm()).item()
            cosine = torch.nn.functional.cosine_similarity(update, mean_task_vector, dim=0).item()
            print(f"{name:<16}{report.seconds:>9.3f}{ratio:>22.3f}{cosine:>24.3f}")
    print(
        f"merged {N_EXPERTS} experts of a {base.numel():,}-parameter Llama with {len(METHODS)} methods "
        f"(checkpoints in {base_path.parent})"
    )
    return 0
