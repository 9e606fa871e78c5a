"""Rank classification on models whose log-probabilities are known, and batching invariance on a real Llama.

Shared builders (tokenizer, bigram-table models, tiny random Llama) live here and are imported by the
other test_eval_* files.
"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mergelab.eval import choice_scores, rank_classification

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
WORDS = "a b c d e f g h x y z answer : ?".split()


def word_tokenizer() -> PreTrainedTokenizerFast:
    """WordLevel tokenizer over WORDS with <bos> prepended to every encoded text (not to choices)."""
    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer()


def bigram_table(tokenizer, transitions: dict[tuple[str, str], float]) -> torch.Tensor:
    """(vocab, vocab) next-token logits: row = current token, zero except the given transitions."""
    table = torch.zeros(len(tokenizer), len(tokenizer))
    for (current, following), logit in transitions.items():
        table[tokenizer.convert_tokens_to_ids(current), tokenizer.convert_tokens_to_ids(following)] = logit
    return table


class BigramModule(torch.nn.Module):
    """Bare module with the HF causal-LM call interface; next-token logits = table[current token]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def bigram_llama(table: torch.Tensor) -> LlamaForCausalLM:
    """A real LlamaForCausalLM rigged to compute the same bigram logits (so `generate` works on it).

    One-hot embeddings; attention and MLP outputs zeroed so the residual stream stays the embedding; the
    final RMSNorm (eps 0) maps the one-hot to itself; lm_head holds the transposed table.
    """
    vocab = table.shape[0]
    hidden = -(-vocab // 4) * 4  # two heads of even size
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        rms_norm_eps=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1 / math.sqrt(hidden))
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, :vocab] = table.T
    return model


def random_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def hand_score(table: torch.Tensor, tokenizer, prompt_last: str, choice: list[str]) -> float:
    """Sum of log p(choice token | previous token) under the bigram table, by hand."""
    log_probs = torch.log_softmax(table.double(), dim=-1)
    ids = tokenizer.convert_tokens_to_ids
    previous = [prompt_last] + choice[:-1]
    return sum(log_probs[ids(before), ids(token)].item() for before, token in zip(previous, choice))


# ":" -> "a" -> "b" is likely per token but two tokens long; ":" -> "c" is one moderately likely token.
LENGTH_CASE = {(":", "a"): 2.0, ("a", "b"): 6.0, (":", "c"): 2.5}


@pytest.fixture(params=["module", "llama"])
def make_bigram(request):
    return BigramModule if request.param == "module" else bigram_llama


def test_scores_equal_hand_computed_log_probability_sums(tokenizer, make_bigram):
    table = bigram_table(tokenizer, LENGTH_CASE)
    model = make_bigram(table)
    prompts = ["x answer :", "y ?", "answer :"]
    choices = [[" a b", " c", " a b c"], [" a", " z"], [" c"]]
    scores = choice_scores(model, tokenizer, prompts, choices, batch_size=4, progress=False)
    for prompt, options, row in zip(prompts, choices, scores):
        expected = [hand_score(table, tokenizer, prompt.split()[-1], option.split()) for option in options]
        assert row == pytest.approx(expected, abs=1e-5)
    normalized = choice_scores(model, tokenizer, prompts, choices, length_normalize=True, progress=False)
    for options, row, mean_row in zip(choices, scores, normalized):
        assert mean_row == pytest.approx([s / len(o.split()) for s, o in zip(row, options)], abs=1e-6)


def test_length_normalization_picks_a_different_answer_on_a_built_case(tokenizer, make_bigram):
    table = bigram_table(tokenizer, LENGTH_CASE)
    model = make_bigram(table)
    prompts, choices = ["x answer :"], [[" a b", " c"]]
    by_hand_sum = [hand_score(table, tokenizer, ":", ["a", "b"]), hand_score(table, tokenizer, ":", ["c"])]
    by_hand_mean = [by_hand_sum[0] / 2, by_hand_sum[1]]
    assert by_hand_sum[1] > by_hand_sum[0] and by_hand_mean[0] > by_hand_mean[1]  # the case is built right
    assert rank_classification(model, tokenizer, prompts, choices, progress=False) == [1]
    assert rank_classification(model, tokenizer, prompts, choices, length_normalize=True, progress=False) == [
        0
    ]


def test_equal_scores_go_to_the_first_choice(tokenizer):
    model = BigramModule(bigram_table(tokenizer, {}))  # uniform next-token distribution
    assert rank_classification(model, tokenizer, ["x :"], [[" b", " a", " c"]], progress=False) == [0]


def unpadded_scores(model, tokenizer, prompt: str, options: list[str]) -> list[float]:
    """Independent re-implementation: one unpadded forward per choice, log-softmax, sum over choice tokens."""
    prompt_ids = tokenizer(prompt).input_ids
    scores = []
    for option in options:
        choice_ids = tokenizer(option, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + choice_ids])).logits[0].double()
        log_probs = torch.log_softmax(logits, dim=-1)
        scores.append(sum(log_probs[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(choice_ids)))
    return scores


def test_batched_scores_equal_unpadded_scores_whatever_the_batch_composition(tokenizer):
    model = random_llama(tokenizer)
    rng = random.Random(0)
    prompts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(9)]
    choices = [
        [" " + " ".join(rng.choices(WORDS, k=rng.randint(1, 5))) for _ in range(rng.randint(1, 4))]
        for _ in prompts
    ]
    expected = [unpadded_scores(model, tokenizer, p, c) for p, c in zip(prompts, choices)]
    for batch_size in (1, 3, 7, 64):
        scores = choice_scores(model, tokenizer, prompts, choices, batch_size=batch_size, progress=False)
        for row, expected_row in zip(scores, expected):
            assert row == pytest.approx(expected_row, abs=1e-4)
    shuffled = list(range(len(prompts)))
    rng.shuffle(shuffled)
    reordered = choice_scores(
        model,
        tokenizer,
        [prompts[i] for i in shuffled],
        [choices[i] for i in shuffled],
        batch_size=5,
        progress=False,
    )
    for position, example in enumerate(shuffled):
        assert reordered[position] == pytest.approx(expected[example], abs=1e-4)


def test_one_token_choices_are_scored_from_one_pass_per_prompt_with_the_same_scores(tokenizer):
    model = random_llama(tokenizer)
    rng = random.Random(1)
    prompts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(7)]
    choices = [[" " + word for word in rng.sample(WORDS, rng.randint(2, 6))] for _ in prompts]
    choices[3] = [" a b", " c"]  # one example with a two-token choice takes the per-choice path
    expected = [unpadded_scores(model, tokenizer, p, c) for p, c in zip(prompts, choices)]
    passes = []
    original_forward = model.forward
    model.forward = lambda **inputs: passes.append(inputs["input_ids"].shape[0]) or original_forward(**inputs)
    scores = choice_scores(model, tokenizer, prompts, choices, batch_size=4, progress=False)
    for row, expected_row in zip(scores, expected):
        assert row == pytest.approx(expected_row, abs=1e-4)
    # six one-token prompts in two passes of at most 4 prompts, then the 2 rows of the other example
    assert passes == [4, 2, 2]


def test_explicit_device_is_used(tokenizer):
    model = BigramModule(bigram_table(tokenizer, LENGTH_CASE))
    scores = choice_scores(model, tokenizer, ["x :"], [[" a b", " c"]], device="cpu", progress=False)
    assert scores[0] == pytest.approx(
        [
            hand_score(model.table.detach(), tokenizer, ":", ["a", "b"]),
            hand_score(model.table.detach(), tokenizer, ":", ["c"]),
        ],
        abs=1e-5,
    )


@pytest.mark.parametrize(
    ("prompts", "choices", "error", "match"),
    [
        (["x :"], [[" a"], [" b"]], ValueError, "differ in length"),
        (["x :"], [[]], ValueError, "example 0 has no answer choices"),
        (["x :", "y :"], [[" a"], [" a", ""]], ValueError, "choice '' of example 1 tokenizes to no tokens"),
        ("x :", [[" a"]], TypeError, "prompts must be a list of strings"),
        (["x :"], [" a"], TypeError, r"choices\[0\] must be a list of strings"),
    ],
)
def test_bad_input_names_the_culprit(tokenizer, prompts, choices, error, match):
    model = BigramModule(bigram_table(tokenizer, {}))
    with pytest.raises(error, match=match):
        rank_classification(model, tokenizer, prompts, choices, progress=False)


def test_empty_prompt_without_special_tokens_is_an_error(tokenizer):
    model = BigramModule(bigram_table(tokenizer, {}))
    bare = word_tokenizer()
    bare._tokenizer.post_processor = None
    with pytest.raises(ValueError, match=r"prompt 0 \(''\) tokenizes to no tokens"):
        rank_classification(model, bare, [""], [[" a"]], progress=False)
