"""A second, independently fine-tuned copy of every expert (replicate=1): paths, seeds, determinism."""

from __future__ import annotations

import shutil

import pytest

from mergelab import zoo
from mergelab.zoo.cache import read_manifest
from mergelab.zoo.cli import main as zoo_main
from tests.zoo_fixture import component_weights


@pytest.fixture(scope="module")
def second_replicate(micro_zoo):
    """The micro size's replicate-1 experts of both bases, built into the session's MERGELAB_HOME."""
    zoo.build("micro", device="cpu", progress=False, replicate=1)
    return micro_zoo


def test_replicate_0_is_the_default_expert_path(micro_zoo):
    category = zoo.load_suite().held_in_categories[0]
    default = zoo.model_path("micro", "it", "expert", category)
    assert zoo.model_path("micro", "it", "expert", category, replicate=0) == default
    assert default == micro_zoo / "zoo" / "micro" / "it" / "experts" / category


def test_replicate_1_has_every_expert_of_both_bases_from_the_shared_base(second_replicate):
    suite = zoo.load_suite()
    for base_kind in zoo.BASE_KINDS:
        root = second_replicate / "zoo" / "micro" / base_kind / "experts_r1"
        for category in suite.held_in_categories:
            path = zoo.model_path("micro", base_kind, "expert", category, replicate=1)
            manifest = read_manifest(path)
            assert path == root / category
            assert manifest["replicate"] == 1 and manifest["tasks"] == suite.tasks_in(category)
    assert not (second_replicate / "zoo" / "micro" / "base" / "multitask_r1").exists()


def test_replicate_experts_differ_from_replicate_0_but_share_its_shapes(second_replicate):
    category = zoo.load_suite().held_in_categories[0]
    first = component_weights(zoo.model_path("micro", "base", "expert", category))
    second = component_weights(zoo.model_path("micro", "base", "expert", category, replicate=1))
    base = component_weights(zoo.model_path("micro", "base", "base"))
    assert first.keys() == second.keys() == base.keys()
    assert not all(first[name].equal(second[name]) for name in first)
    # both are fine-tuned from the same base: each is closer to it than to a random re-initialization
    drift = sum(float((second[name] - base[name]).norm()) for name in base)
    spread = sum(float(base[name].norm()) for name in base)
    assert drift < spread


def test_replicate_rebuilds_byte_identically(second_replicate):
    category = zoo.load_suite().held_in_categories[-1]
    path = zoo.model_path("micro", "it", "expert", category, replicate=1)
    before = read_manifest(path)["sha256"]
    shutil.rmtree(path)
    zoo.build("micro", device="cpu", progress=False, replicate=1)
    assert read_manifest(path)["sha256"] == before


def test_replicates_exist_for_init_0_experts_only_and_unknown_ones_are_errors(capsys):
    with pytest.raises(zoo.ZooError, match="zoo replicate 1 has only experts of init 0"):
        zoo.model_path("micro", "base", "multitask", replicate=1)
    with pytest.raises(zoo.ZooError, match="zoo replicate 1 has only experts of init 0"):
        zoo.model_path("micro", "base", "expert", "color", init=1, replicate=1)
    with pytest.raises(zoo.ZooError, match=r"unknown zoo replicate 5; valid: \[0, 1\]"):
        zoo.build("micro", replicate=5)
    assert zoo_main(["build", "size=micro", "replicate=2"]) == 2
    assert "unknown option value 'replicate=2'; valid: 0, 1" in capsys.readouterr().err
