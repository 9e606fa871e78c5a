"""The T0 suite: its task table, and P3 rows (local fixtures in the hub schema, or a stand-in hub) mapped
to our task schema, with the logical splits carved as documented."""

from __future__ import annotations

import datasets
import pytest

from mergelab.eval import suites
from mergelab.eval.suites import t0
from tests.p3_fixture import p3_rows, save_p3_subset

RTE = t0.TASKS_BY_NAME["rte"]
XSUM = t0.TASKS_BY_NAME["xsum"]


def rte_rows(n: int, offset: int = 0) -> datasets.Dataset:
    prompts = [f"premise {index + offset} does it follow" for index in range(n)]
    targets = ["yes" if (index + offset) % 3 else "no" for index in range(n)]
    return p3_rows(prompts, targets, [["yes", "no"]] * n)


def test_the_table_has_the_papers_categories():
    suite = t0.load_suite()
    assert suite.held_in_categories == [
        "multiple_choice_qa",
        "extractive_qa",
        "closed_book_qa",
        "sentiment",
        "topic_classification",
        "structure_to_text",
        "summarization",
        "paraphrase_identification",
    ]
    assert all(len(suite.tasks_in(category)) == 2 for category in suite.held_in_categories)
    assert suite.held_out_categories == [
        "sentence_completion",
        "nli",
        "coreference",
        "word_sense_disambiguation",
    ]
    assert {t.kind for t in t0.TASKS if t.group == "held_out"} == {"classification"}
    assert len({t.subset for t in t0.TASKS}) == len(t0.TASKS)
    assert suites.load_suite("t0").tasks == suite.tasks


def test_local_rows_map_to_the_task_schema(tmp_path):
    save_p3_subset(tmp_path, RTE.subset, {"train": rte_rows(6), "validation": rte_rows(4, offset=100)})
    test = t0.load_task("rte", "test", str(tmp_path))
    assert test.column_names == ["prompt", "target", "choices", "label"]
    assert test["prompt"] == [f"premise {100 + i} does it follow" for i in range(4)]  # P3's padding stripped
    assert test["target"] == [
        "yes",
        "yes",
        "no",
        "yes",
    ]  # rows 100..103: "no" where the index is a multiple of 3
    assert test["label"] == [0, 0, 1, 0]
    assert test["choices"] == [["yes", "no"]] * 4


def test_validation_is_the_tail_of_train_and_disjoint_from_train(tmp_path, monkeypatch):
    monkeypatch.setattr(t0, "VALIDATION_ROWS", 2)
    save_p3_subset(tmp_path, RTE.subset, {"train": rte_rows(6), "validation": rte_rows(4, offset=100)})
    train = t0.load_task("rte", "train", str(tmp_path))
    validation = t0.load_task("rte", "validation", str(tmp_path))
    assert train["prompt"] == [f"premise {i} does it follow" for i in range(4)]
    assert validation["prompt"] == [f"premise {i} does it follow" for i in (4, 5)]


def test_generation_rows_have_no_choices_and_label_minus_one(tmp_path, monkeypatch):
    rows = p3_rows(["write one sentence about the cat", "the dog"], ["the cat is red", "a dog"])
    save_p3_subset(tmp_path, XSUM.subset, {"validation": rows})
    monkeypatch.setenv(t0.DATA_DIR_ENV, str(tmp_path))  # the environment variable stands in for data_dir
    test = suites.load_task("t0", "xsum", "test")
    assert test["target"] == ["the cat is red", "a dog"]
    assert test["label"] == [-1, -1] and test["choices"] == [[], []]


def test_tasks_without_a_hub_validation_split_use_their_test_split(tmp_path):
    rows = p3_rows(["the movie was great"], ["positive"], [["negative", "positive"]])
    save_p3_subset(tmp_path, t0.TASKS_BY_NAME["imdb"].subset, {"train": rows, "test": rows})
    assert t0.load_task("imdb", "test", str(tmp_path))["label"] == [1]


def test_hub_reads_go_through_load_dataset_with_the_same_mapping(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(path, name, split, revision):
        calls.append((path, name, split, revision))
        return rte_rows(4, offset=100)

    monkeypatch.delenv(t0.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from_hub = t0.load_task("rte", "test")
    save_p3_subset(tmp_path, RTE.subset, {"validation": rte_rows(4, offset=100)})
    assert calls == [("bigscience/P3", RTE.subset, "validation", t0.P3_REVISION)]
    assert from_hub.to_dict() == t0.load_task("rte", "test", str(tmp_path)).to_dict()


def test_bad_rows_and_missing_data_name_the_task(tmp_path):
    rows = p3_rows(["premise"], ["perhaps"], [["yes", "no"]])
    save_p3_subset(tmp_path, RTE.subset, {"validation": rows})
    with pytest.raises(ValueError, match=r"T0 task 'rte' .*row 0: target 'perhaps' is not among"):
        t0.load_task("rte", "test", str(tmp_path))
    with pytest.raises(
        FileNotFoundError, match=r"T0 task 'cb': no local copy of bigscience/P3/super_glue_cb"
    ):
        t0.load_task("cb", "test", str(tmp_path))
    save_p3_subset(tmp_path, RTE.subset, {"validation": p3_rows(["premise"], ["yes"])})
    with pytest.raises(ValueError, match=r"rows lack columns \['answer_choices'\]"):
        t0.load_task("rte", "test", str(tmp_path))
    with pytest.raises(KeyError, match="unknown T0 task 'nope'"):
        t0.load_task("nope", "test", str(tmp_path))
    with pytest.raises(KeyError, match="not 'train'"):
        t0.load_task("rte", "train", str(tmp_path))


def test_prefetch_writes_what_data_dir_reads(tmp_path, monkeypatch):
    def fake_load_dataset(path, name, revision):
        assert (path, name, revision) == ("bigscience/P3", RTE.subset, t0.P3_REVISION)
        return datasets.DatasetDict({"train": rte_rows(3), "validation": rte_rows(2, offset=100)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert t0.prefetch(tmp_path, ["rte"], progress=False) == [tmp_path / "bigscience" / "P3" / RTE.subset]
    assert t0.load_task("rte", "test", str(tmp_path))["prompt"] == [
        "premise 100 does it follow",
        "premise 101 does it follow",
    ]
    with pytest.raises(KeyError, match="unknown T0 task 'rtee'"):
        t0.prefetch(tmp_path, ["rtee"], progress=False)
