"""`mergelab eval`: a checkpoint on disk scored like `mergelab run` scores a merge, and lm-eval tasks."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from mergelab import zoo
from mergelab.cli import main as cli
from mergelab.experiment import results, runner
from mergelab.experiment.config import validate
from mergelab.experiment.sweep import compose
from tests.conftest import tiny_llama

FAST = ["model=micro", "eval.max_examples=8", "logger=none", "progress=false", "device=cpu"]


def eval_rows(tmp_path, model, tasks, *extra):
    """`mergelab eval` through the console entry point; the rows of the fragment it wrote."""
    args = [f"model={model}", f"tasks=[{','.join(tasks)}]", f"results_dir={tmp_path / 'evals'}", "device=cpu"]
    assert cli(["eval", *args, "eval.max_examples=8", "progress=false", *extra]) == 0
    return results.load("eval", tmp_path / "evals")


@pytest.fixture(scope="module")
def saved_run(micro_zoo, tmp_path_factory):
    """A micro-zoo run that saved its merged checkpoint, and the run's rows."""
    root = tmp_path_factory.mktemp("run")
    config = compose(
        [
            *FAST,
            f"results_dir={root}",
            "study=t",
            "merge=task_arithmetic",
            "experts.n_experts=2",
            "save_merged=true",
        ]
    )
    spec = validate(config)
    rows = runner.run_one(config)
    return {"rows": rows, "merged": root / "t" / "merged" / spec.config_hash}


def test_eval_of_the_saved_merge_reproduces_the_runs_scores(saved_run, tmp_path):
    run_rows = saved_run["rows"].set_index("task")
    tasks = list(run_rows.index)
    rows = eval_rows(tmp_path, saved_run["merged"], tasks)
    assert list(rows.columns) == results.COLUMNS
    assert sorted(rows["task"]) == sorted(tasks)
    for row in rows.itertuples():
        assert row.value == run_rows.loc[row.task, "value"]
        assert row.metric == run_rows.loc[row.task, "metric"] and row.group == run_rows.loc[row.task, "group"]
        assert row.split == "test" and row.parameters == run_rows.loc[row.task, "parameters"]
        assert list(row.correct) == list(run_rows.loc[row.task, "correct"])  # per example, for intervals
        assert list(row.examples) == list(run_rows.loc[row.task, "examples"])
        assert row.chance == run_rows.loc[row.task, "chance"]
    assert rows["reference"].isna().all()
    # the run saved its merge with a mergelab.json: the rows name the merge as the run's rows do
    for column in ("method", "expert_set", "n_experts", "hyperparameters", "scale"):
        assert set(rows[column]) == set(run_rows[column]), column


def test_eval_of_the_base_gives_the_runs_held_out_references(saved_run, tmp_path):
    run_rows = saved_run["rows"]
    held_out = run_rows[run_rows["group"] == "held_out"].set_index("task")
    rows = eval_rows(tmp_path, zoo.model_path("micro", "base", "base"), list(held_out.index)[:3])
    assert len(rows) == 3
    for row in rows.itertuples():
        assert row.value == held_out.loc[row.task, "reference"]


def test_rows_name_the_merge_of_a_mergelab_directory_and_only_an_unchanged_one_is_skipped(
    saved_run, tmp_path, capsys
):
    model = tmp_path / "merged"
    shutil.copytree(saved_run["merged"], model)
    record = {
        "mergelab_version": "0.1.0",
        "git_commit": "unknown",
        "merge": {
            "method": "task_arithmetic",
            "base": "/zoo/base",
            "experts": ["/zoo/experts/color", "/zoo/experts/food"],
            "hparams": {"scale": 0.4, "weights": None},
            "options": {"device": "cpu", "max_shard_size": "5GB"},
        },
    }
    (model / "mergelab.json").write_text(json.dumps(record))
    task = saved_run["rows"]["task"].iloc[0]
    rows = eval_rows(tmp_path, model, [task], "name=soup")
    (row,) = rows.itertuples()
    assert (row.model, row.method, row.expert_set, row.n_experts, row.scale) == (
        "soup",
        "task_arithmetic",
        "color,food",
        2,
        0.4,
    )
    assert json.loads(row.hyperparameters) == {"scale": 0.4, "weights": None}
    capsys.readouterr()
    eval_rows(tmp_path, model, [task], "name=soup")
    assert "done before, skipped" in capsys.readouterr().out
    weights = model / "model.safetensors"  # merged again into the same directory: evaluated again
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    eval_rows(tmp_path, model, [task], "name=soup")
    assert "done before" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tasks=[color_qa]"], "missing required option(s): model"),
        (["model=/nowhere", "tasks=[color_qa]"], "model: path does not exist: /nowhere"),
        (["model=/m", "tasks=[colour_qa]"], "tasks: colour_qa not in the zoo suite; its tasks: color_qa"),
        (["model=/m", "tasks=color_qa"], "tasks must be a non-empty list"),
        (["model=/m", "tasks=[color_qa]", "eval.split=dev"], "eval.split: 'dev' is not allowed"),
        (["model=/m", "tasks=[color_qa]", "modle=/m"], "unknown option 'modle'"),
    ],
)
def test_bad_eval_options_are_one_line_errors(micro_zoo, capsys, args, message):
    assert cli(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mergelab eval: error: ") and message in err and err.count("\n") == 1


TOY_TASK = """\
task: mergelab_toy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def toy_documents(n: int = 12) -> list[dict]:
    return [
        {
            "question": f"w{i} w{i + 1} w{i + 2}",
            "choices": [f"w{i + 3}", f"w{i + 5}", f"w{i + 7}"],
            "label": i % 3,
        }
        for i in range(n)
    ]


def independent_accuracy(model, tokenizer, documents) -> float:
    """Rank classification as the harness defines it for single-token choices: the choice whose token has
    the highest log-probability after the question (no BOS), counted against the label."""
    correct = 0
    for document in documents:
        context = tokenizer(document["question"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([context])).logits[0, -1].log_softmax(-1)
        choices = [tokenizer.convert_tokens_to_ids(choice) for choice in document["choices"]]
        correct += int(
            max(range(len(choices)), key=lambda index: logits[choices[index]]) == document["label"]
        )
    return correct / len(documents)


@pytest.mark.slow
def test_lm_eval_task_defined_locally_scores_a_tiny_llama_offline(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from tests.test_vocabulary import BASE_WORDS, word_tokenizer

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    monkeypatch.setenv("MERGELAB_HOME", str(tmp_path / "home"))  # the zoo suite's color_qa is built here
    model_dir = tmp_path / "tiny"
    model = tiny_llama(seed=3, vocab_size=len(BASE_WORDS)).eval()
    tokenizer = word_tokenizer(BASE_WORDS)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    documents = toy_documents()
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    data = tasks_dir / "toy.jsonl"
    data.write_text("".join(json.dumps(document) + "\n" for document in documents))
    (tasks_dir / "toy.yaml").write_text(TOY_TASK.format(data=data))
    rows = eval_rows(tmp_path, model_dir, ["lm_eval:mergelab_toy", "color_qa"], f"include_path={tasks_dir}")
    harness = rows[rows["task"] == "lm_eval:mergelab_toy"]
    assert list(harness["metric"]) == ["acc"] and list(harness["split"]) == ["test"]
    # eval.max_examples=8 is the harness's limit: the first 8 of the 12 documents
    assert harness["value"].iloc[0] == pytest.approx(independent_accuracy(model, tokenizer, documents[:8]))
    assert set(rows["task"]) == {"lm_eval:mergelab_toy", "color_qa"}
    assert cli(["eval", f"model={model_dir}", "tasks=[lm_eval:no_such_task]", f"results_dir={tmp_path}"]) == 2
