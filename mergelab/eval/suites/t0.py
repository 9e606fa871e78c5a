"""The T0 task mixture of "What Matters for Model Merging at Scale?" as a mergelab suite, read from `bigscience/P3`.

The paper trains one expert per T0 held-in category (8 categories, 2 datasets each) and tests zero-shot
generalization on the T0 held-out categories. Its prompts are the promptsource templates of the T0 paper,
which `bigscience/P3` stores already applied: every row has `inputs_pretokenized` (the filled-in prompt),
`targets_pretokenized` (the answer) and, for templates with fixed answers, `answer_choices`. We read P3
rather than the original datasets plus our own templates because it is the T0 protocol itself (same
templates, same answer choices, one schema for all 23 datasets, so one mapping instead of 23).

Each task is one dataset under one template (one P3 subset). Held-out datasets follow the T0 paper's
held-out evaluation set (Story Cloze is left out: it needs a manual download); the two held-in datasets per
category are ours, picked from the T0 training mixture as the paper does not list its pairs. A P3 row
becomes our schema: prompt, target, choices, label (index of the target among the choices, -1 for
generation tasks). Logical splits map to hub splits: `test` is the hub validation split (held-out labels
of SuperGLUE's test splits are hidden, and T0 evaluates on validation), `validation` (used by
`select=validation`) is the last `VALIDATION_ROWS` rows of the hub train split, disjoint from the test rows.

Where the data comes from: with `data_dir` (`eval.data_dir` or `MERGELAB_DATA_DIR`), the subset is
`<data_dir>/bigscience/P3/<subset>`, a `datasets.DatasetDict` saved with `save_to_disk` (tests use tiny
fixtures in the hub schema this way); without it, `datasets.load_dataset("bigscience/P3", subset)` at the
revision `P3_REVISION`. Everything after that (split choice, row mapping, checks) is the same code.
`prefetch(data_dir)` downloads every subset into that layout, for runs on machines without network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from mergelab.zoo.suite import TaskSuite
from mergelab.zoo.tasks import TaskSpec

P3 = "bigscience/P3"
P3_REVISION = "refs/convert/parquet"  # P3's own loading script does not run with `datasets` >= 4
SUITE_VERSION = 1  # bump when a task's data, template or split changes
VALIDATION_ROWS = 1000
DATA_DIR_ENV = "MERGELAB_DATA_DIR"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class T0Task:
    """One task: a dataset under one P3 template, its category and group, and its hub split names."""

    name: str
    category: str
    group: str  # held_in | held_out
    kind: str  # classification | generation
    subset: str  # the P3 subset (dataset + template)
    train_split: str = "train"
    test_split: str = "validation"


def _task(name, category, group, kind, subset, test_split="validation") -> T0Task:
    return T0Task(name, category, group, kind, subset, test_split=test_split)


HELD_IN, HELD_OUT, CLS, GEN = "held_in", "held_out", "classification", "generation"
TASKS: tuple[T0Task, ...] = (
    _task(
        "cosmos_qa", "multiple_choice_qa", HELD_IN, CLS, "cosmos_qa_context_description_question_answer_text"
    ),
    _task("sciq", "multiple_choice_qa", HELD_IN, CLS, "sciq_Multiple_Choice"),
    _task("adversarial_qa", "extractive_qa", HELD_IN, GEN, "adversarial_qa_dbidaf_answer_the_following_q"),
    _task("ropes", "extractive_qa", HELD_IN, GEN, "ropes_prompt_bottom_no_hint"),
    _task("hotpot_qa", "closed_book_qa", HELD_IN, GEN, "kilt_tasks_hotpotqa_straighforward_qa"),
    _task("wiki_qa", "closed_book_qa", HELD_IN, GEN, "wiki_qa_Direct_Answer_to_Question"),
    _task("imdb", "sentiment", HELD_IN, CLS, "imdb_Movie_Expressed_Sentiment", "test"),
    _task("rotten_tomatoes", "sentiment", HELD_IN, CLS, "rotten_tomatoes_Movie_Expressed_Sentiment"),
    _task("ag_news", "topic_classification", HELD_IN, CLS, "ag_news_classify_question_first", "test"),
    _task(
        "dbpedia",
        "topic_classification",
        HELD_IN,
        CLS,
        "dbpedia_14_given_list_what_category_does_the_paragraph_belong_to",
        "test",
    ),
    _task("common_gen", "structure_to_text", HELD_IN, GEN, "common_gen_Given_concepts_type_1"),
    _task("wiki_bio", "structure_to_text", HELD_IN, GEN, "wiki_bio_key_content", "val"),
    _task("xsum", "summarization", HELD_IN, GEN, "xsum_DOC_given_above_write_one_sentence"),
    _task("samsum", "summarization", HELD_IN, GEN, "samsum_Sum_up_the_following_dialogue"),
    _task("mrpc", "paraphrase_identification", HELD_IN, CLS, "glue_mrpc_equivalent"),
    _task("paws", "paraphrase_identification", HELD_IN, CLS, "paws_labeled_final_Concatenation"),
    _task("copa", "sentence_completion", HELD_OUT, CLS, "super_glue_copa_best_option"),
    _task("hellaswag", "sentence_completion", HELD_OUT, CLS, "hellaswag_complete_first_then"),
    _task("anli_r1", "nli", HELD_OUT, CLS, "anli_GPT_3_style_r1"),
    _task("cb", "nli", HELD_OUT, CLS, "super_glue_cb_GPT_3_style"),
    _task("rte", "nli", HELD_OUT, CLS, "super_glue_rte_GPT_3_style"),
    _task("wsc", "coreference", HELD_OUT, CLS, "super_glue_wsc.fixed_GPT_3_Style"),
    _task("winogrande", "coreference", HELD_OUT, CLS, "winogrande_winogrande_xl_fill_in_the_blank"),
    _task("wic", "word_sense_disambiguation", HELD_OUT, CLS, "super_glue_wic_GPT_3_prompt"),
)
TASKS_BY_NAME = {task.name: task for task in TASKS}


def load_suite() -> TaskSuite:
    """The T0 suite's task specs in the zoo's `TaskSuite` shape (categories in the paper's order)."""
    return TaskSuite({t.name: TaskSpec(t.name, t.category, t.group, t.kind) for t in TASKS})


def data_dir(configured: str | None) -> str | None:
    """The local directory standing in for the hub: `configured`, else `$MERGELAB_DATA_DIR`, else None."""
    return configured or os.environ.get(DATA_DIR_ENV) or None


def _hub_split(task: T0Task, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(
            f"split {split!r} is not allowed for T0 task '{task.name}'; allowed: {', '.join(SPLITS)}"
        )
    return task.test_split if split == "test" else task.train_split


def _read_split(task: T0Task, hub_split: str, local: str | None) -> datasets.Dataset:
    """One hub split of the task's P3 subset, from `local` (save_to_disk layout) or from the hub."""
    if local is None:
        return datasets.load_dataset(P3, task.subset, split=hub_split, revision=P3_REVISION)
    path = Path(local) / P3 / task.subset
    if not path.is_dir():
        raise FileNotFoundError(f"T0 task '{task.name}': no local copy of {P3}/{task.subset} at {path}")
    splits = datasets.load_from_disk(str(path))
    if hub_split not in splits:
        raise KeyError(f"T0 task '{task.name}': {path} has splits {list(splits)}, not '{hub_split}'")
    return splits[hub_split]


def to_examples(rows: datasets.Dataset, task: T0Task) -> datasets.Dataset:
    """P3 rows as our task schema: prompt, target, choices, label (-1 for generation tasks)."""
    needed = ["inputs_pretokenized", "targets_pretokenized"] + (
        ["answer_choices"] if task.kind == CLS else []
    )
    missing = [column for column in needed if column not in rows.column_names]
    if missing:
        raise ValueError(f"T0 task '{task.name}' ({task.subset}): rows lack columns {missing}")
    columns: dict[str, list] = {"prompt": [], "target": [], "choices": [], "label": []}
    for index, row in enumerate(rows):
        target = row["targets_pretokenized"].strip()
        choices = [choice.strip() for choice in row["answer_choices"]] if task.kind == CLS else []
        if task.kind == CLS and target not in choices:
            raise ValueError(
                f"T0 task '{task.name}' ({task.subset}) row {index}: target {target!r} is not among "
                f"its answer_choices {choices}"
            )
        columns["prompt"].append(row["inputs_pretokenized"].strip())
        columns["target"].append(target)
        columns["choices"].append(choices)
        columns["label"].append(choices.index(target) if choices else -1)
    return datasets.Dataset.from_dict(columns)


def load_task(name: str, split: str, local: str | None = None) -> datasets.Dataset:
    """One logical split (train | validation | test) of a T0 task, in our schema."""
    if name not in TASKS_BY_NAME:
        raise KeyError(f"unknown T0 task '{name}'; known: {', '.join(TASKS_BY_NAME)}")
    task = TASKS_BY_NAME[name]
    rows = _read_split(task, _hub_split(task, split), data_dir(local))
    if split != "test":
        cut = max(len(rows) - VALIDATION_ROWS, 0)
        rows = rows.select(range(cut, len(rows)) if split == "validation" else range(cut))
    return to_examples(rows, task)


def prefetch(local: str | Path, names: list[str] | None = None, *, progress: bool = True) -> list[Path]:
    """Download the P3 subsets of `names` (default: every task) into `local` in the layout `data_dir` reads,
    so runs on a machine without network (e.g. a GPU node) read them offline; returns the written paths."""
    from tqdm.auto import tqdm

    unknown = [name for name in names or [] if name not in TASKS_BY_NAME]
    if unknown:
        raise KeyError(f"unknown T0 task '{unknown[0]}'; known: {', '.join(TASKS_BY_NAME)}")
    written = []
    for name in tqdm(names or list(TASKS_BY_NAME), desc="P3 subsets", disable=not progress, unit="subset"):
        path = Path(local) / P3 / TASKS_BY_NAME[name].subset
        datasets.load_dataset(P3, TASKS_BY_NAME[name].subset, revision=P3_REVISION).save_to_disk(str(path))
        written.append(path)
    if progress:
        print(f"prefetched {len(written)} P3 subsets into {local}")
    return written
