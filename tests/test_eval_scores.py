"""Task accuracy, local `evaluate` metrics, and normalization arithmetic on hand-made dicts."""

from __future__ import annotations

import math

import evaluate
import pytest
from datasets import Dataset

from mergelab.eval import (
    aggregate,
    category_mean,
    evaluate_task,
    evaluate_task_outcome,
    evaluate_tasks,
    exact_match,
    metric_path,
    normalized_scores,
)
from tests.test_eval import LENGTH_CASE, bigram_llama, bigram_table, word_tokenizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return bigram_llama(bigram_table(tokenizer, LENGTH_CASE))


def classification_dataset() -> Dataset:
    # By summed log-prob the model prefers " c" after ":", by mean log-prob " a b" (LENGTH_CASE).
    return Dataset.from_dict(
        {
            "prompt": ["x answer :", "y :", "z ?", "answer :"],
            "target": [" c", " a b", " c", " c"],
            "choices": [[" a b", " c"], [" a b", " c"], [" a b", " c"], [" c", " a b", " d"]],
            "label": [1, 0, 1, 0],
        }
    )


def test_classification_accuracy_follows_the_scoring_rule(tokenizer, model):
    dataset = classification_dataset()
    # summed: " c" everywhere (after "?" next tokens are uniform, and " a b" pays for two tokens).
    assert evaluate_task(model, tokenizer, dataset, "classification", progress=False) == 3 / 4
    # mean: " a b" everywhere (its second token is nearly certain, which halves its cost).
    assert (
        evaluate_task(model, tokenizer, dataset, "classification", length_normalize=True, progress=False)
        == 1 / 4
    )
    assert evaluate_task(model, tokenizer, dataset, "classification", max_examples=2, progress=False) == 1 / 2


def test_classification_outcome_gives_per_example_correctness_and_entities(tokenizer, model):
    dataset = classification_dataset()
    # summed log-prob picks " c" everywhere: right where the label points at " c" (examples 0, 2, 3)
    outcome = evaluate_task_outcome(model, tokenizer, dataset, "classification", progress=False)
    assert (outcome.score, outcome.correct, outcome.examples, outcome.clusters) == (
        3 / 4,
        [1, 0, 1, 1],
        [0, 1, 2, 3],
        None,
    )
    with_entities = dataset.add_column("entity", ["ann", "bob", "ann", "cy"])
    outcome = evaluate_task_outcome(
        model, tokenizer, with_entities, "classification", max_examples=3, progress=False
    )
    assert outcome.correct == [1, 0, 1] and outcome.clusters == ["ann", "bob", "ann"]
    # chance: two choices on the first three examples, three on the last
    assert outcome.chance == pytest.approx(0.5)
    whole = evaluate_task_outcome(model, tokenizer, dataset, "classification", progress=False)
    assert whole.chance == pytest.approx((3 * 0.5 + 1 / 3) / 4)


def test_evaluate_tasks_returns_one_score_per_named_task(tokenizer, model):
    dataset = classification_dataset()
    scores = evaluate_tasks(
        model,
        tokenizer,
        {"sum": (dataset, "classification"), "first": (dataset.select([0]), "classification")},
        batch_size=2,
        progress=False,
    )
    assert scores == {"sum": 3 / 4, "first": 1.0}


def test_bad_task_input_is_named(tokenizer, model):
    dataset = classification_dataset()
    with pytest.raises(ValueError, match="unknown task kind 'regression'"):
        evaluate_task(model, tokenizer, dataset, "regression", progress=False)
    with pytest.raises(ValueError, match=r"lacks columns \['label'\]"):
        evaluate_task(model, tokenizer, dataset.remove_columns("label"), "classification", progress=False)
    with pytest.raises(ValueError, match="no examples"):
        evaluate_task(model, tokenizer, dataset.select([]), "classification", progress=False)


def test_local_evaluate_metrics_load_offline_and_agree_with_the_evaluators():
    accuracy = evaluate.load(metric_path("accuracy"))
    assert accuracy.compute(predictions=[1, 0, 2, 2], references=[1, 1, 2, 0]) == {"accuracy": 0.5}
    matcher = evaluate.load(metric_path("exact_match"))
    predictions, references = [" x y", "z", "A", "b  c "], ["x  y", "w", "a", "b c"]
    assert matcher.compute(predictions=predictions, references=references) == {"exact_match": 0.5}
    assert exact_match(predictions, references) == 0.5
    with pytest.raises(KeyError, match=r"unknown metric 'bleu'; shipped: \['accuracy', 'exact_match'\]"):
        metric_path("bleu")


def test_normalized_scores_divide_by_the_reference():
    normalized = normalized_scores({"t1": 0.4, "t2": 0.6, "t3": 0.9}, {"t1": 0.8, "t2": 0.6, "t3": 0.0})
    assert normalized["t1"] == pytest.approx(0.5) and normalized["t2"] == pytest.approx(1.0)
    assert math.isnan(normalized["t3"])
    with pytest.raises(KeyError, match=r"no reference score for tasks \['t2'\]"):
        normalized_scores({"t1": 0.4, "t2": 0.6}, {"t1": 0.8})


def test_held_in_and_held_out_normalization_end_to_end():
    # held-in tasks (categories A, B) are divided by their category's expert, held-out (C) by the base.
    category_of = {"a1": "A", "a2": "A", "b1": "B", "c1": "C", "c2": "C", "c3": "C"}
    merged = {"a1": 0.6, "a2": 0.9, "b1": 0.5, "c1": 0.3, "c2": 0.4, "c3": 0.6}
    expert_of_category = {"A": {"a1": 0.8, "a2": 0.9}, "B": {"b1": 1.0}}
    base = {"c1": 0.25, "c2": 0.5, "c3": 0.6}
    reference = {
        task: score for scores in expert_of_category.values() for task, score in scores.items()
    } | base
    normalized = normalized_scores(merged, reference)
    held_in = {t: v for t, v in normalized.items() if category_of[t] in expert_of_category}
    held_out = {t: v for t, v in normalized.items() if t in base}
    assert category_mean(held_in, category_of) == pytest.approx({"A": (0.75 + 1.0) / 2, "B": 0.5})
    assert aggregate(held_in, category_of) == pytest.approx((0.875 + 0.5) / 2)
    assert aggregate(held_out, category_of) == pytest.approx((1.2 + 0.8 + 1.0) / 3)
    # mean within category first: A's two tasks do not outweigh B's one (plain task mean would be 0.75)
    assert aggregate(held_in, category_of) != pytest.approx(sum(held_in.values()) / len(held_in))


def test_category_mean_needs_every_category():
    with pytest.raises(KeyError, match=r"no category for tasks \['t9'\]"):
        category_mean({"t9": 1.0}, {"t1": "c"})
    assert math.isnan(aggregate({}, {}))
