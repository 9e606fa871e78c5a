"""The zoo: task suite shape, tokenizer, deterministic and resumable builds, corruption detection."""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from mergelab import zoo
from mergelab.zoo import ladder
from mergelab.zoo.cache import read_manifest
from mergelab.zoo.suite import corpus_lines
from mergelab.zoo.tasks import generate_split, task_definitions
from mergelab.zoo.world import make_world, split_of


def test_suite_is_shaped_like_the_t0_split(micro_zoo):
    suite = zoo.load_suite()
    assert len(suite.held_in_categories) == 8
    assert all(len(suite.tasks_in(category)) == 2 for category in suite.held_in_categories)
    assert len(suite.held_out_categories) == 4 and len(suite.group("held_out")) >= 7
    assert len(suite.group("instruction")) >= 8
    held_out_and_mixture = set(suite.categories("held_out")) | set(suite.categories("instruction"))
    assert not held_out_and_mixture & set(suite.held_in_categories)


def test_every_task_has_splits_templates_and_consistent_labels(micro_zoo):
    suite = zoo.load_suite()
    for name, spec in suite.tasks.items():
        sizes = {split: len(zoo.load_task(name, split)) for split in ("train", "validation", "test")}
        assert sizes == {"train": 1000, "validation": 100, "test": 200}
        test = zoo.load_task(name, "test")
        assert len(set(test["template"])) >= 2, name
        for row in test.select(range(20)):
            assert row["prompt"].endswith(" answer :")
            if spec.kind == "classification":
                assert row["choices"][row["label"]] == row["target"]
                assert spec.chance == pytest.approx(1 / len(row["choices"]))
            else:
                assert row["label"] == -1 and row["choices"] == []


def test_answers_follow_the_world_for_choice_and_counting_tasks():
    """A two-way choice offers the entity's own value and one other (in either order) and answers its own;
    counting answers the number one step away, written digit by digit like its prompt."""
    world = make_world(0)
    definitions = {definition.spec.name: definition for definition in task_definitions()}
    for name, attribute in (("color_choice", "color"), ("size_choice", "size"), ("number_choice", "number")):
        columns = generate_split(definitions[name], world, "test", seed=0)
        orders = Counter()
        for entity, choices, target, label in zip(
            columns["entity"], columns["choices"], columns["target"], columns["label"]
        ):
            value = " " + world.entity(entity).attributes[attribute]
            assert target == value == choices[label] and len(set(choices)) == 2, name
            orders[label] += 1
        assert min(orders.values()) > 60, (name, orders)
    friend = generate_split(definitions["friend_choice"], world, "test", seed=0)
    assert all(t == " " + world.entity(e).friend for e, t in zip(friend["entity"], friend["target"]))
    for name, step in (("add_one", 1), ("subtract_one", -1)):
        columns = generate_split(definitions[name], world, "test", seed=0)
        for entity, prompt, target in zip(columns["entity"], columns["prompt"], columns["target"]):
            assert entity in prompt and len(entity.split()) == len(target.split()) == 3
            assert int(target.replace(" ", "")) == int(entity.replace(" ", "")) + step, (name, prompt)


def test_verdict_tasks_are_balanced_and_true_to_the_world():
    """Every yes / no task gives each verdict to half of every split (a model that always says 'yes'
    scores chance); the instruction mixture's multi-hop task answers the friend's shape, and its "where"
    question the entity's place, in templates no held-in task uses."""
    world = make_world(0)
    definitions = {definition.spec.name: definition for definition in task_definitions()}
    verdict_tasks = [name for name, d in definitions.items() if set(d.spec.choices) == {"yes", "no"}]
    assert {"shape_check", "animal_check", "smaller_digit"} <= set(verdict_tasks)
    for name in verdict_tasks:
        for split in ("train", "validation", "test"):
            counts = Counter(generate_split(definitions[name], world, split, seed=0)["target"])
            assert len(counts) == 2 and max(counts.values()) - min(counts.values()) <= 1, (
                name,
                split,
                counts,
            )
    columns = generate_split(definitions["friend_shape"], world, "test", seed=0)
    for entity, target in zip(columns["entity"], columns["target"]):
        assert target == " " + world.entity(world.entity(entity).friend).attributes["shape"]
    columns = generate_split(definitions["where_live"], world, "test", seed=0)
    assert all(
        t == " " + world.entity(e).attributes["place"] for e, t in zip(columns["entity"], columns["target"])
    )
    held_in_templates = {t for d in definitions.values() if d.spec.group == "held_in" for t in d.templates}
    assert not set(definitions["where_live"].templates) & held_in_templates


def test_nli_offers_the_hypothesis_the_premise_entails_and_one_it_contradicts():
    """The premise states an attribute of two entities (both of the split); the choices state it of one of
    them, once with its own value (the target) and once with the other's, in either order."""
    world = make_world(0)
    definitions = {definition.spec.name: definition for definition in task_definitions()}
    for name, attribute, noun in (("nli_color", "color", "color"), ("nli_food", "food", "food")):
        columns = generate_split(definitions[name], world, "test", seed=0)
        assert definitions[name].spec.chance == 0.5
        for prompt, choices, target, label, entity in zip(
            columns["prompt"], columns["choices"], columns["target"], columns["label"], columns["entity"]
        ):
            named = [word for word in prompt.split() if word in world.names]
            assert len(named) == 2 and entity in named and split_of(named[0]) == split_of(named[1]) == "test"
            other = world.entity(next(word for word in named if word != entity))
            own = world.entity(entity).attributes[attribute]
            assert f" {own} " in prompt and f" {other.attributes[attribute]} " in prompt
            assert target == choices[label] == f" the {noun} of {entity} is {own} ."
            assert choices[1 - label] == f" the {noun} of {entity} is {other.attributes[attribute]} ."
        assert 70 < sum(columns["label"]) < 130, name


def test_coreference_fills_each_name_into_the_sentence_and_answers_the_one_it_fits():
    world = make_world(0)
    definition = next(d for d in task_definitions() if d.spec.name == "coref_color")
    columns = generate_split(definition, world, "test", seed=0)
    for prompt, choices, target, label in zip(
        columns["prompt"], columns["choices"], columns["target"], columns["label"]
    ):
        first, second = (name for name in prompt.split() if name in world.names)
        value = prompt.split(" colored ")[1].split()[0]
        assert choices == [f" {first} is colored {value} .", f" {second} is colored {value} ."]
        assert target == choices[label]
        answer, wrong = (first, second) if label == 0 else (second, first)
        assert world.entity(answer).attributes["color"] == value != world.entity(wrong).attributes["color"]
    assert 70 < sum(columns["label"]) < 130


def test_suite_generation_is_deterministic_and_splits_differ():
    world = make_world(0)
    definition = task_definitions()[0]
    first = generate_split(definition, world, "train", seed=0)
    assert first == generate_split(definition, world, "train", seed=0)
    assert (
        first["prompt"] != generate_split(definition, world, "test", seed=0)["prompt"][: len(first["prompt"])]
    )
    assert make_world(1) != world


def test_no_prompt_of_validation_or_test_appears_in_any_training_split(micro_zoo):
    """Every task's train split (held-in, instruction mixture and held-out alike: all that any component
    could train on) against every validation and test prompt, and validation against test."""
    suite = zoo.load_suite()
    prompts = {
        split: {name: set(zoo.load_task(name, split)["prompt"]) for name in suite.tasks}
        for split in ("train", "validation", "test")
    }
    trained = set().union(*prompts["train"].values())
    for name in suite.tasks:
        assert not prompts["validation"][name] & trained, name
        assert not prompts["test"][name] & trained, name
        assert not prompts["test"][name] & set().union(*prompts["validation"].values()), name


def test_entities_are_disjoint_across_splits_and_every_one_is_in_the_corpus(micro_zoo):
    """An entity (or digit pair, or word triple) asked about in one split is never asked about in another,
    and every test entity's facts are stated in the pretraining corpus (the knowledge the test asks for)."""
    suite = zoo.load_suite()
    corpus = " ".join(corpus_lines("train")).split()
    mentioned = set(corpus)
    for name in suite.tasks:
        entities = {
            split: set(zoo.load_task(name, split)["entity"]) for split in ("train", "validation", "test")
        }
        assert not entities["train"] & entities["validation"], name
        assert not entities["train"] & entities["test"], name
        assert not entities["validation"] & entities["test"], name
        if suite.tasks[name].category not in ("words", "words_mix", "arithmetic", "arithmetic_mix"):
            assert entities["test"] <= mentioned, name
    world = make_world(0)
    assert len(world.entities) >= 160
    assert min(len(world.entities_in(split)) for split in ("train", "validation", "test")) >= 10


def test_split_of_is_a_stable_hash_cut_at_the_shares():
    import zlib

    # buckets: CRC-32 % 100; 0-59 train, 60-69 validation, 70-99 test
    assert zlib.crc32(b"kotiba") == 112599337 and split_of("kotiba") == "train"  # bucket 37
    assert zlib.crc32(b"item2") == 3771045963 and split_of("item2") == "validation"  # bucket 63
    assert zlib.crc32(b"bakoti") == 2151532574 and split_of("bakoti") == "test"  # bucket 74
    shares = Counter(split_of(f"item{index}") for index in range(20_000))
    assert abs(shares["train"] / 20_000 - 0.6) < 0.02 and abs(shares["validation"] / 20_000 - 0.1) < 0.02


def test_tokenizer_round_trips_task_text(micro_zoo):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(zoo.tokenizer_path())
    row = zoo.load_task("reverse_words", "test")[0]
    ids = tokenizer(row["prompt"] + row["target"]).input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == row["prompt"] + row["target"]
    assert (
        ids
        == tokenizer(row["prompt"]).input_ids + tokenizer(row["target"], add_special_tokens=False).input_ids
    )
    assert {tokenizer.pad_token, tokenizer.eos_token} == {"<pad>", "<eos>"}


def test_the_tokenizer_keeps_the_pinned_ids_and_names_words_missing_from_them(micro_zoo, monkeypatch):
    """Token ids are the pinned vocabulary's line numbers whatever the suite's text, and a suite word the
    vocabulary lacks is a clear error before any tokenizer is saved."""
    from transformers import AutoTokenizer

    from mergelab.zoo.tokenizer import zoo_vocabulary

    tokenizer = AutoTokenizer.from_pretrained(zoo.tokenizer_path())
    vocabulary = zoo_vocabulary()
    assert tokenizer.convert_ids_to_tokens(list(range(len(vocabulary)))) == vocabulary
    monkeypatch.setenv("MERGELAB_HOME", str(micro_zoo / "vocabulary_check"))
    shutil.copytree(micro_zoo / "zoo" / "suite", micro_zoo / "vocabulary_check" / "zoo" / "suite")
    monkeypatch.setattr(ladder, "zoo_vocabulary", lambda: [word for word in vocabulary if word != "premise"])
    with pytest.raises(zoo.ZooError, match=r"missing from the zoo vocabulary .*\['premise'\]"):
        ladder.build_tokenizer()
    assert not (micro_zoo / "vocabulary_check" / "zoo" / "tokenizer").exists()


def test_components_are_hf_model_dirs(micro_zoo):
    from transformers import AutoModelForCausalLM

    suite = zoo.load_suite()
    paths = [
        zoo.model_path("micro", kind, "expert", c)
        for kind in zoo.BASE_KINDS
        for c in suite.held_in_categories
    ]
    paths += [
        zoo.model_path("micro", kind, role) for kind in zoo.BASE_KINDS for role in ("base", "multitask")
    ]
    assert all(read_manifest(path) for path in paths) and len(paths) == 20
    model = AutoModelForCausalLM.from_pretrained(paths[0])
    assert model.config.model_type == "llama"


def test_rebuilt_component_is_byte_identical_and_corruption_is_detected(micro_zoo):
    expert = zoo.model_path("micro", "base", "expert", "color")
    original = read_manifest(expert)["sha256"]
    weights = expert / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    assert read_manifest(expert) is None
    zoo.build("micro", device="cpu", progress=False)
    assert read_manifest(expert)["sha256"] == original


def test_parallel_build_trains_the_same_weights_as_the_serial_one(micro_zoo, tmp_path, monkeypatch):
    """jobs=2 trains the experts and multitask models in two worker processes, from the same bases: every
    component's weights match the serial build byte for byte, and a bad jobs value is named."""
    serial = {name: read_manifest(path)["sha256"] for name, path in ladder.component_paths("micro").items()}
    home = tmp_path / "home"
    shutil.copytree(micro_zoo / "zoo" / "suite", home / "zoo" / "suite")
    shutil.copytree(micro_zoo / "zoo" / "tokenizer", home / "zoo" / "tokenizer")
    for kind in zoo.BASE_KINDS:
        shutil.copytree(micro_zoo / "zoo" / "micro" / kind / "base", home / "zoo" / "micro" / kind / "base")
    monkeypatch.setenv("MERGELAB_HOME", str(home))
    zoo.build("micro", device="cpu", progress=False, jobs=2)
    parallel = {name: read_manifest(path)["sha256"] for name, path in ladder.component_paths("micro").items()}
    assert parallel == serial and len(parallel) == 20
    with pytest.raises(zoo.ZooError, match="jobs"):
        zoo.build("micro", device="cpu", progress=False, jobs=0)


def test_interrupted_build_resumes_without_retraining(micro_zoo, monkeypatch):
    for category in ("words", "arithmetic"):
        shutil.rmtree(zoo.model_path("micro", "it", "expert", category))
    real_train = ladder.train_loop
    calls = []

    def train_then_fail(*args, **kwargs):
        calls.append(kwargs["desc"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(ladder, "train_loop", train_then_fail)
    with pytest.raises(KeyboardInterrupt):
        zoo.build("micro", device="cpu", progress=False)
    assert calls == ["micro it expert words", "micro it expert arithmetic"]
    assert read_manifest(zoo.model_path("micro", "it", "expert", "words"))
    assert not zoo.model_path("micro", "it", "expert", "arithmetic").exists()
    assert not list(zoo.model_path("micro", "it", "base").parent.glob("experts/.*partial*"))
    calls.clear()
    zoo.build("micro", device="cpu", progress=False)
    assert calls == ["micro it expert arithmetic"]


def test_unknown_size_is_named(micro_zoo):
    with pytest.raises(zoo.ZooError, match="unknown zoo size 'huge'; valid: \\['micro'"):
        zoo.build("huge")


def test_disk_full_is_a_clear_error_and_leaves_no_partial_entry(micro_zoo, monkeypatch):
    import errno

    from mergelab.zoo.cache import ZooError, atomic_directory

    target = micro_zoo / "zoo" / "scratch"

    def fill_disk(staging):
        (staging / "weights").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ZooError, match="disk full while writing .*scratch"):
        with atomic_directory(target) as staging:
            fill_disk(staging)
    assert not target.exists() and not list(target.parent.glob(".scratch.partial*"))


def test_an_entry_finished_first_by_a_concurrent_build_is_kept(tmp_path, monkeypatch):
    from mergelab.zoo import cache

    target = tmp_path / "suite"
    rename = Path.rename

    def other_build_wins(self, destination):
        destination.mkdir()  # another process renamed its finished copy into place just before us
        (destination / "data").write_text("theirs")
        return rename(self, destination)

    monkeypatch.setattr(Path, "rename", other_build_wins)
    with cache.atomic_directory(target) as staging:
        (staging / "data").write_text("mine")
    assert (target / "data").read_text() == "theirs" and not list(tmp_path.glob(".suite.partial*"))


def test_cli_lists_the_built_size_and_rejects_bad_options(micro_zoo, capsys):
    from mergelab.zoo.cli import main

    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    line = next(row for row in listing.splitlines() if row.startswith("micro"))
    parameters = read_manifest(zoo.model_path("micro", "base", "base"))["parameters"]
    assert f"{parameters:,}" in line and "20/20" in line
    assert main(["build", "size=huge"]) == 2
    assert "unknown zoo size 'huge'" in capsys.readouterr().err
    assert main(["build", "sise=micro"]) == 2
    assert "unknown option 'sise=micro'" in capsys.readouterr().err


def test_zoo_home_follows_mergelab_home(micro_zoo):
    assert zoo.zoo_home() == micro_zoo / "zoo"
    assert (
        zoo.model_path("micro", "it", "expert", "color")
        == micro_zoo / "zoo" / "micro" / "it" / "experts" / "color"
    )
    with pytest.raises(zoo.ZooError, match="base_kind must be one of"):
        zoo.model_path("micro", "instruct", "base")


def test_out_of_memory_during_training_is_a_clear_error(micro_zoo, monkeypatch):
    expert = zoo.model_path("micro", "base", "expert", "size")
    shutil.rmtree(expert)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(ladder, "train_loop", out_of_memory)
    with pytest.raises(zoo.ZooError, match="out of memory while training .*size; nothing was written"):
        zoo.build("micro", device="cpu", progress=False)
    assert not expert.exists()
    monkeypatch.undo()
    zoo.build("micro", device="cpu", progress=False)
    assert read_manifest(expert)


def scratch_home_over_the_micro_base(tmp_path: Path, monkeypatch) -> Path:
    """Point MERGELAB_HOME at an empty zoo that shares the micro zoo's pretrained base, suite and tokenizer,
    so a test can build the other components there."""
    from mergelab.zoo.cache import zoo_home

    home = tmp_path / "home"
    (home / "zoo" / "micro" / "base").mkdir(parents=True)
    (home / "zoo" / "micro" / "base" / "base").symlink_to(zoo.model_path("micro", "base", "base"))
    for entry in ("suite", "tokenizer"):
        (home / "zoo" / entry).symlink_to(zoo_home() / entry)
    monkeypatch.setenv("MERGELAB_HOME", str(home))
    return home


def test_the_instruction_tuning_trains_at_its_own_learning_rate(micro_zoo, tmp_path, monkeypatch):
    """`SizeSpec.it_lr` sets the instruction tuning's learning rate and no other component's (the experts
    keep `finetune_lr`); unset, the tuning takes `finetune_lr` too."""
    home = scratch_home_over_the_micro_base(tmp_path, monkeypatch)
    rates: dict[str, float] = {}

    def record(model, next_batch, *, learning_rate, desc, **options):
        rates[desc] = learning_rate
        return 0.0

    monkeypatch.setattr(ladder, "train_loop", record)
    spec = ladder.SIZES["micro"]
    tuned = dataclasses.replace(spec, it_lr=spec.finetune_lr / 4)
    only = {"it", ladder.expert_name("base", "color")}
    ladder._build_components("micro", tuned, torch.device("cpu"), False, only=only)
    assert rates == {"micro it": spec.finetune_lr / 4, "micro base expert color": spec.finetune_lr}
    shutil.rmtree(home / "zoo" / "micro" / "it")
    ladder._build_components("micro", spec, torch.device("cpu"), False, only={"it"})
    assert rates["micro it"] == spec.finetune_lr


def test_the_it_base_keeps_its_share_of_the_tuning_and_the_experts_all_of_theirs(
    micro_zoo, tmp_path, monkeypatch
):
    """`SizeSpec.it_interpolation` puts the it base that far from the pretrained base toward the tuned
    weights (WiSE-FT), the tied embedding once; an expert keeps its whole change."""
    scratch_home_over_the_micro_base(tmp_path, monkeypatch)

    def add_one(model, next_batch, **options):
        with torch.no_grad():
            for weight in model.parameters():
                weight.add_(1.0)
        return 0.0

    monkeypatch.setattr(ladder, "train_loop", add_one)
    spec = dataclasses.replace(ladder.SIZES["micro"], it_interpolation=0.25)
    only = {"it", ladder.expert_name("base", "color")}
    ladder._build_components("micro", spec, torch.device("cpu"), False, only=only)
    base = AutoModelForCausalLM.from_pretrained(zoo.model_path("micro", "base", "base")).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(zoo.model_path("micro", "it", "base")).state_dict()
    expert = AutoModelForCausalLM.from_pretrained(zoo.model_path("micro", "base", "expert", "color"))
    for name, weight in expert.state_dict().items():
        torch.testing.assert_close(tuned[name], base[name] + 0.25, msg=name)
        torch.testing.assert_close(weight, base[name] + 1.0, msg=name)


def test_the_corpus_is_encoded_once_per_process_until_its_file_changes(micro_zoo):
    first = ladder.encoded_corpus("train")
    assert ladder.encoded_corpus("train") is first
    tokenizer = ladder.build_tokenizer()
    expected = tokenizer(" ".join(corpus_lines("train")), add_special_tokens=False).input_ids
    assert first.tolist() == expected
    corpus = ladder.build_suite() / "corpus_train.txt"
    original = corpus.read_text()
    try:
        corpus.write_text("the friend of\n" + original)
        changed = ladder.encoded_corpus("train")
        assert changed is not first
        assert changed[: len(first)].tolist() != first.tolist()
    finally:
        corpus.write_text(original)
