"""Seq2seq evaluation (rank classification with decoder labels, greedy generation) on a tiny real T5,
checked against an unbatched, unpadded re-implementation written here."""

from __future__ import annotations

import datasets
import pytest
import torch

from mergelab import eval as ml_eval
from tests.conftest import tiny_t5
from tests.seq2seq_fixture import t5_like_tokenizer, unbatched_picks, unbatched_score

PROMPTS = [
    "the cat is red",
    "does it follow that the dog was a king in the city",
    "review of the movie",
    "what is the topic of the paragraph about sports and business",
]
CHOICES = [
    ["yes", "no"],
    ["true", "false", "maybe so"],
    ["great", "terrible film"],
    ["sports", "world", "science"],
]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    return tiny_t5(seed=3).eval(), t5_like_tokenizer()


@torch.no_grad()
def unbatched_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy decoding by hand: append the argmax token until </s> or `max_new_tokens` tokens."""
    input_ids = torch.tensor([tokenizer(prompt).input_ids])
    decoded = [model.config.decoder_start_token_id]
    for _ in range(max_new_tokens):
        logits = model(input_ids=input_ids, decoder_input_ids=torch.tensor([decoded])).logits[0, -1]
        token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            break
        decoded.append(token)
    return tokenizer.decode(decoded[1:], skip_special_tokens=True).strip()


@pytest.mark.parametrize("length_normalize", [False, True])
def test_choice_scores_match_unbatched_scores(model_and_tokenizer, length_normalize):
    model, tokenizer = model_and_tokenizer
    scores = ml_eval.choice_scores(
        model, tokenizer, PROMPTS, CHOICES, batch_size=3, length_normalize=length_normalize, progress=False
    )
    for prompt, options, row in zip(PROMPTS, CHOICES, scores):
        for option, score in zip(options, row):
            total, length = unbatched_score(model, tokenizer, prompt, option)
            assert score == pytest.approx(total / length if length_normalize else total, abs=1e-4)


def test_rank_classification_picks_the_best_unbatched_choice(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    predictions = ml_eval.rank_classification(
        model, tokenizer, PROMPTS, CHOICES, batch_size=2, progress=False
    )
    expected = unbatched_picks(model, tokenizer, PROMPTS, CHOICES)
    assert predictions == expected


def test_greedy_generation_matches_decoding_by_hand(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    outputs = ml_eval.greedy_generate(
        model, tokenizer, PROMPTS, max_new_tokens=4, batch_size=3, progress=False
    )
    assert outputs == [unbatched_greedy(model, tokenizer, prompt, 4) for prompt in PROMPTS]


def test_evaluate_task_accuracy_and_exact_match_on_a_controlled_case(model_and_tokenizer):
    """Labels set to the model's own pick for three examples and to another choice for the fourth: 3/4.
    Targets set to the model's own greedy output (3 new tokens) for two of four prompts: exact match 2/4."""
    model, tokenizer = model_and_tokenizer
    picks = ml_eval.rank_classification(model, tokenizer, PROMPTS, CHOICES, progress=False)
    labels = [*picks[:3], (picks[3] + 1) % len(CHOICES[3])]
    classification = datasets.Dataset.from_dict({"prompt": PROMPTS, "choices": CHOICES, "label": labels})
    accuracy = ml_eval.evaluate_task(model, tokenizer, classification, "classification", progress=False)
    assert accuracy == 0.75
    own = [unbatched_greedy(model, tokenizer, prompt, 3) for prompt in PROMPTS]
    targets = [own[0], own[1], own[2] + " river", "king" if own[3] != "king" else "queen"]
    generation = datasets.Dataset.from_dict({"prompt": PROMPTS, "target": targets})
    score = ml_eval.evaluate_task(
        model, tokenizer, generation, "generation", max_new_tokens=3, progress=False
    )
    assert score == 0.5
