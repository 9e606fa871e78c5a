"""The zoo's second, independently initialized base (init=1): paths, determinism, difference from init 0."""

from __future__ import annotations

import json
import shutil

import pytest

from mergelab import zoo
from mergelab.zoo.cache import read_manifest
from mergelab.zoo.cli import main as zoo_main
from tests.zoo_fixture import component_weights


@pytest.fixture(scope="module")
def second_init(micro_zoo):
    """The micro size's init-1 base and experts, built into the session's MERGELAB_HOME."""
    zoo.build("micro", device="cpu", progress=False, init=1)
    return micro_zoo


def test_init_0_paths_and_manifests_are_unchanged(micro_zoo):
    assert zoo.model_path("micro", "base", "base") == micro_zoo / "zoo" / "micro" / "base" / "base"
    assert zoo.model_path("micro", "base", "base", init=0) == zoo.model_path("micro", "base", "base")
    assert "init" not in json.loads((zoo.model_path("micro", "base", "base") / "manifest.json").read_text())


def test_second_init_has_a_base_and_an_expert_per_category(second_init):
    suite = zoo.load_suite()
    root = second_init / "zoo" / "micro" / "init1" / "base"
    assert zoo.model_path("micro", "base", "base", init=1) == root / "base"
    for category in suite.held_in_categories:
        manifest = read_manifest(zoo.model_path("micro", "base", "expert", category, init=1))
        assert (
            manifest is not None and manifest["init"] == 1 and manifest["tasks"] == suite.tasks_in(category)
        )


def test_second_init_differs_from_the_first(second_init):
    category = zoo.load_suite().held_in_categories[0]
    for role, extra in (("base", ()), ("expert", (category,))):
        first = component_weights(zoo.model_path("micro", "base", role, *extra))
        second = component_weights(zoo.model_path("micro", "base", role, *extra, init=1))
        assert first.keys() == second.keys()
        assert all(first[name].shape == second[name].shape for name in first)
        assert not any(first[name].equal(second[name]) for name in first if "norm" not in name)


def test_second_init_rebuilds_byte_identically(second_init):
    category = zoo.load_suite().held_in_categories[0]
    paths = [
        zoo.model_path("micro", "base", "base", init=1),
        zoo.model_path("micro", "base", "expert", category, init=1),
    ]
    before = [read_manifest(path)["sha256"] for path in paths]
    for path in paths:
        shutil.rmtree(path)
    zoo.build("micro", device="cpu", progress=False, init=1)
    assert [read_manifest(path)["sha256"] for path in paths] == before


def test_second_init_has_no_it_base_or_multitask_and_unknown_inits_are_errors(capsys):
    with pytest.raises(zoo.ZooError, match="zoo init 1 has only base_kind 'base'"):
        zoo.model_path("micro", "it", "base", init=1)
    with pytest.raises(zoo.ZooError, match="zoo init 1 has only base_kind 'base'"):
        zoo.model_path("micro", "base", "multitask", init=1)
    with pytest.raises(zoo.ZooError, match=r"unknown zoo init 2; valid: \[0, 1\]"):
        zoo.build("micro", init=2)
    assert zoo_main(["build", "size=micro", "init=2"]) == 2
    assert "unknown option value 'init=2'; valid: 0, 1" in capsys.readouterr().err
