"""The real-model protocol end to end: `mergelab run model=flan-t5-base experts=paths eval=t0` on a tiny real
T5 family and local P3 fixtures, with accuracies that are hand-computable by construction; and the config
rules that go with it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mergelab import cli
from mergelab.eval.suites import t0
from mergelab.experiment import results
from mergelab.experiment.config import ConfigError, validate
from mergelab.experiment.sweep import compose
from tests.conftest import state_dicts
from tests.p3_fixture import p3_rows, save_p3_subset
from tests.seq2seq_fixture import WORDS, save_t5_family, t5_like_tokenizer, unbatched_picks

N_ROWS = 6
CHOICES = {"imdb": ["positive", "negative"], "rte": ["yes", "no", "maybe"]}


def prompts_for(task: str) -> list[str]:
    """Six distinct prompts per task, made of the tokenizer's words."""
    offset = sum(map(ord, task)) % len(WORDS)
    return [
        " ".join(WORDS[(offset + 7 * row + step) % len(WORDS)] for step in range(4 + row))
        for row in range(N_ROWS)
    ]


def hub_overrides(family: dict, data_dir: Path, results_dir: Path, *extra: str) -> list[str]:
    return [
        "model=flan-t5-base",
        f"model.path={family['base']}",
        "experts=paths",
        f"+experts.paths.sentiment={family['experts'][0]}",
        f"+experts.paths.summarization={family['experts'][1]}",
        "eval=t0",
        f"eval.data_dir={data_dir}",
        "merge=average",
        "logger=none",
        "progress=false",
        "device=cpu",
        f"results_dir={results_dir}",
        "study=real",
        *extra,
    ]


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    """Models, P3 fixtures and the hand-computable expectations for two tasks.

    imdb (held-in, expert 0's category): labels are expert 0's own picks for rows 0-3 and another choice for
    rows 4-5, so the expert scores 4/6. rte (held-out): labels are the base's picks, so the base scores 1.
    """
    root = tmp_path_factory.mktemp("real_protocol")
    family = save_t5_family(root / "models", 2)
    tokenizer = t5_like_tokenizer()
    from transformers import T5ForConditionalGeneration

    base = T5ForConditionalGeneration.from_pretrained(family["base"]).eval()
    expert = T5ForConditionalGeneration.from_pretrained(family["experts"][0]).eval()
    merged = T5ForConditionalGeneration.from_pretrained(family["base"]).eval()
    experts = state_dicts(family["experts"])
    merged.load_state_dict(
        {name: (experts[0][name] + experts[1][name]) / 2 for name in experts[0]}, strict=False
    )
    labels, merged_picks = {}, {}
    for task, model in (("imdb", expert), ("rte", base)):
        prompts, options = prompts_for(task), [CHOICES[task]] * N_ROWS
        own = unbatched_picks(model, tokenizer, prompts, options)
        labels[task] = own if task == "rte" else [*own[:4], *((pick + 1) % 2 for pick in own[4:])]
        merged_picks[task] = unbatched_picks(merged, tokenizer, prompts, options)
    data_dir = root / "data"
    for task in t0.TASKS:
        if task.group == "held_in" and task.category not in ("sentiment", "summarization"):
            continue
        prompts = prompts_for(task.name)
        if task.kind == "generation":
            rows = p3_rows(prompts, [WORDS[row] for row in range(N_ROWS)])
        else:
            options = CHOICES.get(task.name, ["true", "false"])
            answers = labels.get(task.name, [row % len(options) for row in range(N_ROWS)])
            rows = p3_rows(prompts, [options[answer] for answer in answers], [options] * N_ROWS)
        save_p3_subset(data_dir, task.subset, {"train": rows, task.test_split: rows})
    return {"family": family, "data_dir": data_dir, "labels": labels, "merged_picks": merged_picks}


def accuracy(predictions: list[int], labels: list[int]) -> float:
    return sum(p == label for p, label in zip(predictions, labels)) / len(labels)


def test_mergelab_run_on_the_t0_fixture_suite(protocol, tmp_path, single_torch_thread):
    overrides = hub_overrides(protocol["family"], protocol["data_dir"], tmp_path)
    assert cli.main(["run", *overrides]) == 0
    rows = results.load("real", tmp_path).set_index("task")
    suite = t0.load_suite()
    held_in = suite.tasks_in("sentiment") + suite.tasks_in("summarization")
    assert sorted(rows.index) == sorted(held_in + suite.group("held_out"))
    assert set(rows.loc[held_in, "group"]) == {"held_in"}
    assert set(rows.loc[suite.group("held_out"), "group"]) == {"held_out"}
    assert set(rows.loc[["xsum", "samsum"], "metric"]) == {"exact_match"}
    assert set(rows.loc[["imdb", "rte"], "metric"]) == {"accuracy"}
    assert rows["model"].iloc[0] == "flan-t5-base" and set(rows["n_experts"]) == {2}
    assert rows.loc["imdb", "reference"] == pytest.approx(4 / 6)
    imdb = accuracy(protocol["merged_picks"]["imdb"], protocol["labels"]["imdb"])
    assert rows.loc["imdb", "value"] == pytest.approx(imdb)
    assert rows.loc["imdb", "normalized"] == pytest.approx(imdb / (4 / 6))
    assert rows.loc["rte", "reference"] == 1.0
    rte = accuracy(protocol["merged_picks"]["rte"], protocol["labels"]["rte"])
    assert rows.loc["rte", "value"] == pytest.approx(rte) and rows.loc["rte", "normalized"] == pytest.approx(
        rte
    )
    for task, row in rows.iterrows():
        expected = row["value"] / row["reference"] if row["reference"] else math.nan
        assert row["normalized"] == pytest.approx(expected, nan_ok=True), task
        assert math.isnan(row["multitask_reference"])


def test_t0_config_rules(tmp_path):
    family = {"base": tmp_path / "base", "experts": [tmp_path / "e0", tmp_path / "e1"]}
    spec = validate(compose(hub_overrides(family, tmp_path / "data", tmp_path)))
    assert spec.categories == ["sentiment", "summarization"] and spec.config.eval.suite == "t0"
    moved = validate(compose(hub_overrides(family, tmp_path / "elsewhere", tmp_path)))
    assert moved.config_hash != spec.config_hash  # fixture data and hub data are different runs
    with pytest.raises(ConfigError, match="experts.paths.nli: not a T0 held-in category"):
        validate(compose(hub_overrides(family, tmp_path, tmp_path, "+experts.paths.nli=/x")))
    with pytest.raises(ConfigError, match=r"model.arch: 'seq2seq_lm' is evaluated only on the T0 suite"):
        validate(compose(hub_overrides(family, tmp_path, tmp_path, "eval=both")))
    with pytest.raises(ConfigError, match=r"eval.suite: 't0' is not allowed with a zoo model"):
        validate(compose(["model=micro", "eval=t0", "logger=none"]))


def test_the_zoo_suite_hash_ignores_data_dir(tmp_path):
    causal = ["model=qwen2.5-0.5b", "experts=paths", "+experts.paths.color=/a", "+experts.paths.place=/b"]
    plain = validate(compose([*causal, "eval=both", "logger=none"]))
    located = validate(compose([*causal, "eval=both", "eval.data_dir=/data", "logger=none"]))
    assert plain.config.eval.suite == "zoo" and plain.config_hash == located.config_hash


def test_select_on_validation_picks_the_best_scale_on_the_train_tail(protocol, tmp_path, single_torch_thread):
    """select=validation on the t0 suite: the chosen task-arithmetic scale is the one whose merge (done here,
    on the checkpoints' tensors) has the best mean normalized held-in score on the validation split."""
    from transformers import T5ForConditionalGeneration

    from mergelab import eval as ml_eval

    family, data_dir = protocol["family"], str(protocol["data_dir"])
    grid = ["select=validation", "merge=task_arithmetic", "select_grid.task_arithmetic.scale=[0.3,1.0]"]
    assert cli.main(["run", *hub_overrides(family, protocol["data_dir"], tmp_path, *grid)]) == 0
    chosen = set(results.load("real", tmp_path)["scale"])
    tokenizer = t5_like_tokenizer()
    base_state, *expert_states = state_dicts([family["base"], *family["experts"]])
    experts = {"sentiment": family["experts"][0], "summarization": family["experts"][1]}
    suite = t0.load_suite()

    def validation_scores(model, category: str) -> dict[str, float]:
        return {
            task: ml_eval.evaluate_task(
                model,
                tokenizer,
                t0.load_task(task, "validation", data_dir),
                suite.tasks[task].kind,
                progress=False,
            )
            for task in suite.tasks_in(category)
        }

    references = {}
    for category, path in experts.items():
        references |= validation_scores(T5ForConditionalGeneration.from_pretrained(path).eval(), category)
    totals = {}
    for scale in (0.3, 1.0):
        merged = T5ForConditionalGeneration.from_pretrained(family["base"]).eval()
        state = {
            name: tensor + scale * sum(expert[name] - tensor for expert in expert_states)
            for name, tensor in base_state.items()
        }
        merged.load_state_dict(state, strict=False)
        per_category = []
        for category in experts:
            scores = validation_scores(merged, category)
            ratios = [scores[task] / references[task] for task in scores if references[task]]
            if ratios:
                per_category.append(sum(ratios) / len(ratios))
        totals[scale] = sum(per_category) / len(per_category)
    assert chosen == {max(totals, key=totals.get)}
