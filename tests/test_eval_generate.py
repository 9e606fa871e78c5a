"""Greedy generation: a rigged model emits known sequences; batched (left-padded) equals unpadded greedy."""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset

from mergelab.eval import (
    evaluate_task,
    evaluate_task_outcome,
    exact_match,
    exact_matches,
    greedy_generate,
    normalize_answer,
)
from tests.test_eval import WORDS, bigram_llama, bigram_table, random_llama, word_tokenizer

# ":" -> a -> b -> <eos>;  "?" -> c -> d -> c -> ... (never stops);  "h" -> <eos> at once
RIGGED = {
    (":", "a"): 9.0,
    ("a", "b"): 9.0,
    ("b", "<eos>"): 9.0,
    ("?", "c"): 9.0,
    ("c", "d"): 9.0,
    ("d", "c"): 9.0,
    ("h", "<eos>"): 9.0,
}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def rigged(tokenizer):
    return bigram_llama(bigram_table(tokenizer, RIGGED))


def test_rigged_model_emits_its_sequences_and_stops_at_eos_or_the_budget(tokenizer, rigged):
    prompts = ["x answer :", "?", "a b c d e f g h", "z z ?"]
    outputs = greedy_generate(rigged, tokenizer, prompts, max_new_tokens=5, batch_size=8, progress=False)
    assert outputs == ["a b", "c d c d c", "", "c d c d c"]
    short = greedy_generate(rigged, tokenizer, prompts, max_new_tokens=1, batch_size=3, progress=False)
    assert short == ["a", "c", "", "c"]


def greedy_by_hand(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Independent greedy loop: full forward on the unpadded sequence each step, no cache."""
    ids = tokenizer(prompt).input_ids
    generated: list[int] = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            token = int(model(input_ids=torch.tensor([ids + generated])).logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        generated.append(token)
    return tokenizer.decode(generated, skip_special_tokens=True).strip()


def test_batched_generation_equals_unpadded_greedy_whatever_the_batch(tokenizer):
    model = random_llama(tokenizer, seed=1)
    rng = random.Random(1)
    prompts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 10))) for _ in range(7)]
    expected = [greedy_by_hand(model, tokenizer, prompt, 6) for prompt in prompts]
    assert len({len(tokenizer(p).input_ids) for p in prompts}) > 3  # real left padding happens
    for batch_size in (1, 3, 16):
        outputs = greedy_generate(
            model, tokenizer, prompts, max_new_tokens=6, batch_size=batch_size, progress=False
        )
        assert outputs == expected


def test_exact_match_strips_and_collapses_whitespace_but_keeps_case():
    assert normalize_answer("  a \t b \n") == "a b"
    assert exact_match([" a  b ", "c", "d"], ["a b", "C", "d"]) == pytest.approx(2 / 3)
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match(["a", "b"], ["a"])


def test_generation_task_scores_exact_match_and_catches_run_on_answers(tokenizer, rigged):
    dataset = Dataset.from_dict(
        {
            "prompt": ["x answer :", "?", "h", "y :"],
            # default budget = longest target (3 tokens) + 1 = 4: "?" gives "c d c d" != "c d c"
            "target": [" a b", " c d c", " ", " a"],
            "choices": [[], [], [], []],
            "label": [-1, -1, -1, -1],
        }
    )
    score = evaluate_task(rigged, tokenizer, dataset, "generation", progress=False)
    assert score == pytest.approx(2 / 4)  # "a b" right, "" right, "a b" != "a", "c d c d" != "c d c"
    assert evaluate_task(rigged, tokenizer, dataset, "generation", max_new_tokens=3, progress=False) == 3 / 4
    assert evaluate_task(rigged, tokenizer, dataset, "generation", max_examples=1, progress=False) == 1.0
    outcome = evaluate_task_outcome(rigged, tokenizer, dataset, "generation", progress=False)
    assert (outcome.score, outcome.correct, outcome.examples, outcome.chance) == (
        0.5,
        [1, 0, 1, 0],
        [0, 1, 2, 3],
        0.0,
    )


def test_exact_matches_per_example():
    assert exact_matches([" a  b ", "c", "d"], ["a b", "C", "d"]) == [1, 0, 1]
    assert exact_matches([], []) == []


def test_bad_generation_arguments_are_named(tokenizer, rigged):
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        greedy_generate(rigged, tokenizer, ["x :"], max_new_tokens=0, progress=False)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        greedy_generate(rigged, tokenizer, ["x :"], max_new_tokens=2, batch_size=0, progress=False)
