"""Engine behaviour: exact streaming global TIES, determinism, layout independence, copied buffers."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import save_file

from mergelab.api.merging import merge
from tests.conftest import state_dicts
from tests.reference import paper_ties_state_dicts


def random_model(seed: int, n_experts: int = 3) -> tuple[dict, list[dict]]:
    """A base state dict of several float tensors plus an integer buffer, and perturbed experts."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"embed.weight": (40, 8), "layer.0.weight": (8, 8), "layer.0.bias": (8,), "head.weight": (5, 8)}
    base = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    base["layer.0.position_ids"] = torch.arange(8)
    experts = []
    for _ in range(n_experts):
        expert = {
            name: tensor + torch.randn(tensor.shape, generator=generator) * 0.1
            for name, tensor in base.items()
            if tensor.is_floating_point()
        }
        expert["layer.0.position_ids"] = torch.arange(8)
        experts.append(expert)
    return base, experts


def file_digests(directory) -> dict[str, str]:
    """Digests of the weights and copied JSON files (not mergelab.json, which names the inputs' paths)."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
        if path.suffix in {".safetensors", ".json"} and path.name != "mergelab.json"
    }


@pytest.mark.parametrize("sign", ["sum", "count"])
def test_streaming_global_ties_equals_in_memory_paper_formula(sign):
    base, experts = random_model(seed=0)
    merged = merge(base, experts, "ties", density=0.2, scale=1.1, sign=sign, device="cpu", progress=False)
    expected = paper_ties_state_dicts(base, experts, density=0.2, scale=1.1, sign=sign)
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-6)
    assert torch.equal(merged["layer.0.position_ids"], torch.arange(8))


@pytest.mark.parametrize(
    ("method", "hparams"),
    [("ties", {"density": 0.3}), ("dare", {"density": 0.3, "combine": "ties", "seed": 7})],
)
def test_output_from_disk_is_independent_of_shard_layout_and_tensor_order(tmp_path, method, hparams):
    base, experts = random_model(seed=1)
    save_file(base, tmp_path / "base.safetensors")
    layouts = {}
    for layout in ("single", "split"):
        paths = []
        for index, expert in enumerate(experts):
            directory = tmp_path / f"{layout}{index}"
            directory.mkdir()
            names = sorted(expert, reverse=layout == "split")
            if layout == "single":
                save_file({name: expert[name] for name in names}, directory / "model.safetensors")
            else:  # one file per tensor, in reverse order
                for position, name in enumerate(names):
                    save_file({name: expert[name]}, directory / f"part{position}.safetensors")
            paths.append(directory)
        out = tmp_path / f"out_{layout}"
        merge(tmp_path / "base.safetensors", paths, method, out, device="cpu", progress=False, **hparams)
        layouts[layout] = file_digests(out)
    assert layouts["single"] == layouts["split"]
    (merged,) = state_dicts([tmp_path / "out_single"])
    assert not torch.equal(merged["embed.weight"], base["embed.weight"])


def test_same_merge_twice_is_byte_identical(llama_family, tmp_path):
    digests = []
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        merge(
            llama_family["base"],
            llama_family["experts"],
            "dare",
            out,
            density=0.5,
            combine="ties",
            device="cpu",
            progress=False,
        )
        digests.append(file_digests(out))
    assert digests[0] == digests[1] and "model.safetensors" in digests[0]


def test_dare_masks_do_not_depend_on_tensor_order():
    base, experts = random_model(seed=2)
    forward = merge(base, experts, "dare", density=0.4, seed=5, device="cpu", progress=False)
    reverse_base = dict(reversed(list(base.items())))
    reverse_experts = [dict(reversed(list(expert.items()))) for expert in experts]
    backward = merge(reverse_base, reverse_experts, "dare", density=0.4, seed=5, device="cpu", progress=False)
    for name in base:
        assert torch.equal(forward[name], backward[name])
    other_seed = merge(base, experts, "dare", density=0.4, seed=6, device="cpu", progress=False)
    assert not torch.equal(forward["embed.weight"], other_seed["embed.weight"])


def test_sharded_output_has_index_and_reloads(llama_family, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sharded"
    merge(
        llama_family["base"], llama_family["experts"], "average", out, max_shard_size="30KB", progress=False
    )
    index = (out / "model.safetensors.index.json").read_text()
    shards = sorted(path.name for path in out.glob("*.safetensors"))
    assert len(shards) > 1 and all(name in index for name in shards)
    base, *experts = state_dicts([llama_family["base"], *llama_family["experts"]])
    reloaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name in base:
        torch.testing.assert_close(
            reloaded[name], sum(expert[name] for expert in experts) / 3, rtol=0, atol=1e-6
        )


def test_tied_embeddings_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.conftest import save_family, tiny_llama

    family = save_family(tmp_path, tiny_llama(seed=4, tie=True), 2)
    out = tmp_path / "merged"
    merge(family["base"], family["experts"], "task_arithmetic", out, scale=1.0, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    base, *experts = state_dicts([family["base"], *family["experts"]])
    expected = base["model.embed_tokens.weight"] + sum(
        e["model.embed_tokens.weight"] - base["model.embed_tokens.weight"] for e in experts
    )
    torch.testing.assert_close(model.lm_head.weight.detach(), expected, rtol=0, atol=1e-6)


def test_existing_output_is_replaced_only_with_overwrite(llama_family, tmp_path):
    out = tmp_path / "merged"
    merge(llama_family["base"], llama_family["experts"], "average", out, progress=False)
    first = file_digests(out)
    merge(
        llama_family["base"], llama_family["experts"], "task_arithmetic", out, overwrite=True, progress=False
    )
    assert file_digests(out) != first
    assert sorted(path.name for path in tmp_path.iterdir()) == ["merged"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # a normal directory, not a private temp dir


def test_summary_line_reports_tensors_bytes_seconds_and_peak_memory(tmp_path, capsys):
    base, experts = random_model(seed=3)
    merge(base, experts, "average", tmp_path / "out", device="cpu")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    total_bytes = sum(tensor.numel() * tensor.element_size() for tensor in base.values())
    assert line.startswith(f"merged 5 tensors ({total_bytes / 2**20:.1f} MiB) in ")
    assert " s on cpu; peak RSS " in line and line.endswith(f"GiB -> {tmp_path / 'out'}")
