"""Statistic cache: miss then hit, invalidation when the checkpoint changes, atomic entries; data specs."""

from __future__ import annotations

import datasets
import pytest
import torch
from safetensors.torch import load_file

from mergelab.stats import (
    StatisticCache,
    StatisticDataError,
    StatisticFile,
    StatisticKey,
    StatisticRequest,
    expert_statistic,
    load_examples,
)
from mergelab.zoo.tokenizer import word_tokenizer
from tests.conftest import fine_tune_like, tiny_llama

WORDS = "is the sky blue red green yes no answer : a b c"


@pytest.fixture
def expert_dir(tmp_path):
    """A tiny Llama expert with its own word-level tokenizer."""
    tokenizer = word_tokenizer(WORDS.split())
    model = tiny_llama(seed=0, vocab_size=len(tokenizer))
    path = tmp_path / "expert"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


@pytest.fixture
def data_dir(tmp_path):
    """A DatasetDict on disk in the zoo's schema: 6 train examples, classification and generation."""
    rows = {
        "prompt": ["is the sky blue answer :"] * 3 + ["a b c answer :"] * 3,
        "target": [" yes", " no", " yes", " a", " b", " c"],
        "choices": [[" yes", " no"]] * 3 + [[]] * 3,
        "label": [0, 1, 0, -1, -1, -1],
    }
    path = tmp_path / "data"
    train = datasets.Dataset.from_dict(rows)
    datasets.DatasetDict({"train": train, "validation": train.select(range(2))}).save_to_disk(str(path))
    return path


def test_cache_misses_then_hits_and_recomputes_when_the_checkpoint_changes(
    tmp_path, expert_dir, data_dir, single_torch_thread
):
    path, model = expert_dir
    cache = StatisticCache(tmp_path / "cache")
    request = StatisticRequest("fisher", n_examples=6, settings={"estimator": "empirical"})
    first = expert_statistic(path, str(data_dir), request, cache=cache, progress=False)
    assert not first.hit and first.path.is_file() and first.path.parent == tmp_path / "cache" / "fisher"
    original = load_file(first.path)
    again = expert_statistic(path, str(data_dir), request, cache=cache, progress=False)
    assert again.hit and again.path == first.path
    with StatisticFile(again.path) as statistic:
        assert statistic.metadata["examples"] == "6"
        assert statistic.get("no.such.tensor") is None
        norm = sum(float(t.double().square().sum()) for t in original.values()) ** 0.5
        assert statistic.norm == pytest.approx(norm)
    other = expert_statistic(
        path, str(data_dir), StatisticRequest("fisher", 4, settings={"estimator": "empirical"}), cache=cache
    )
    assert not other.hit and other.path != first.path  # n_examples is part of the key
    fine_tune_like(model, seed=7, noise=0.5).save_pretrained(path)  # the checkpoint changes in place
    changed = expert_statistic(path, str(data_dir), request, cache=cache, progress=False)
    assert not changed.hit and changed.path == first.path  # the stale entry was replaced
    assert not torch.equal(load_file(changed.path)["model.norm.weight"], original["model.norm.weight"])
    assert sorted(p.name for p in (tmp_path / "cache" / "fisher").iterdir()) == sorted(
        {first.path.name, other.path.name}
    )  # no stale or partial files left


def test_fetch_computes_once_and_a_damaged_entry_is_recomputed(tmp_path):
    checkpoint = tmp_path / "weights.safetensors"
    checkpoint.write_bytes(b"version 1")
    key = StatisticKey("gram", str(checkpoint), "zoo:color", "train", 8, "abc", {"seed": 0})
    cache = StatisticCache(tmp_path / "cache")
    calls = []

    def compute():
        calls.append(1)
        return {"w": torch.full((2, 2), float(len(calls)))}, {"examples": "8"}

    assert not cache.fetch(key, compute).hit
    assert cache.fetch(key, compute).hit and len(calls) == 1
    cache.path(key).write_bytes(cache.path(key).read_bytes()[:20])  # truncated by a crash elsewhere
    result = cache.fetch(key, compute)
    assert not result.hit and len(calls) == 2 and load_file(result.path)["w"][0, 0] == 2
    checkpoint.write_bytes(b"version 2, longer")
    assert not cache.fetch(key, compute).hit and len(calls) == 3


def test_data_specs_select_seeded_subsets_and_name_bad_input(tmp_path, data_dir):
    full = load_examples(str(data_dir), 100)
    assert len(full.examples) == 6 and full.examples[0].choices == (" yes", " no")
    assert not full.examples[3].is_classification
    subset = load_examples(str(data_dir), 4, seed=1)
    assert len(subset.examples) == 4 and subset == load_examples(str(data_dir), 4, seed=1)
    assert subset.fingerprint != load_examples(str(data_dir), 4, seed=2).fingerprint
    assert len(load_examples(str(data_dir), 100, split="validation").examples) == 2
    with pytest.raises(StatisticDataError, match="no split 'test'"):
        load_examples(str(data_dir), 4, split="test")
    with pytest.raises(StatisticDataError, match="missing_dir"):
        load_examples(str(tmp_path / "missing_dir"), 4)
    bad = tmp_path / "bad"
    datasets.Dataset.from_dict({"prompt": ["x"]}).save_to_disk(str(bad))
    with pytest.raises(StatisticDataError, match="target"):
        load_examples(str(bad), 4)


def test_zoo_data_specs(micro_zoo):
    from mergelab import zoo

    suite = zoo.load_suite()
    category = suite.held_in_categories[0]
    examples = load_examples(f"zoo:{category}", 10_000)
    assert len(examples.examples) == sum(len(zoo.load_task(t, "train")) for t in suite.tasks_in(category))
    with pytest.raises(StatisticDataError, match="zoo:nope"):
        load_examples("zoo:nope", 4)
