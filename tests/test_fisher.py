"""Fisher merging: the statistic against closed-form gradients of a softmax layer, and the merge rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mergelab.methods import TensorContext, get_method
from mergelab.methods.base import MergeConfigError
from mergelab.stats.data import Example
from mergelab.stats.encode import encode_examples
from mergelab.stats.fisher import fisher_diagonal
from mergelab.zoo.tokenizer import word_tokenizer

WORDS = "a b c d e"


class SoftmaxLM(torch.nn.Module):
    """A causal 'LM' whose next-token logits depend only on the current token: `W[:, x_t] + bias`.

    Its log-likelihood gradient has a closed form: d log softmax(z)[y] / d z_j = [j = y] - p_j, with
    z = W[:, x_t] + bias, so the gradient reaches only column x_t of W and the bias.
    """

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(vocab, vocab, generator=generator))
        self.bias = torch.nn.Parameter(torch.randn(vocab, generator=generator))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.weight.T[input_ids] + self.bias)


@pytest.fixture(autouse=True)
def _one_thread(single_torch_thread):
    """Thousands of tiny backward passes: one thread avoids oversubscribing the shared CPU."""


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(WORDS.split())


def token(tokenizer, word: str) -> int:
    return tokenizer.convert_tokens_to_ids(word)


def classification_examples() -> list[Example]:
    return [
        Example("a", " c", (" b", " c", " d"), 1),
        Example("e", " b", (" b", " c", " d"), 0),
    ]


def analytic_classification(model, tokenizer, examples, estimator: str) -> dict[str, torch.Tensor]:
    """Per example: z = W[:, x_last] + bias restricted to the choices, q = softmax; expected Fisher entry
    of choice j is q_j (1 - q_j) (sum_c q_c ([j = c] - q_j)^2), empirical ([j = label] - q_j)^2."""
    weight = torch.zeros_like(model.weight)
    bias = torch.zeros_like(model.bias)
    with torch.no_grad():
        for example in examples:
            column = token(tokenizer, example.prompt)
            choices = [token(tokenizer, choice.strip()) for choice in example.choices]
            q = torch.softmax((model.weight[:, column] + model.bias)[choices], dim=0)
            if estimator == "expected":
                entries = q * (1 - q)
            else:
                entries = (torch.nn.functional.one_hot(torch.tensor(example.label), len(choices)) - q) ** 2
            for choice, value in zip(choices, entries):
                weight[choice, column] += value
                bias[choice] += value
    return {"weight": weight / len(examples), "bias": bias / len(examples)}


@pytest.mark.parametrize("estimator", ["expected", "empirical"])
def test_classification_fisher_equals_analytic_diagonal(tokenizer, estimator):
    model = SoftmaxLM(len(tokenizer))
    examples = classification_examples()
    fisher = fisher_diagonal(
        model, tokenizer, encode_examples(tokenizer, examples), estimator, progress=False
    )
    expected = analytic_classification(model, tokenizer, examples, estimator)
    assert set(fisher) == {"weight", "bias"}
    for name in fisher:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-5, atol=1e-7)
    assert int((fisher["weight"].abs() > 1e-9).sum()) == 6  # three choices x two prompt columns


def generation_gradient(model, tokenizer, inputs: list[int], outputs: list[int]) -> dict[str, torch.Tensor]:
    """Closed form of d sum_t log p(y_t | x_t) / d (W, bias): column x_t of W and the bias get e_y - p."""
    weight = torch.zeros_like(model.weight)
    bias = torch.zeros_like(model.bias)
    with torch.no_grad():
        for x, y in zip(inputs, outputs):
            p = torch.softmax(model.weight[:, x] + model.bias, dim=0)
            step = torch.nn.functional.one_hot(torch.tensor(y), len(p)).float() - p
            weight[:, x] += step
            bias += step
    return {"weight": weight, "bias": bias}


def test_generation_empirical_fisher_equals_analytic(tokenizer):
    model = SoftmaxLM(len(tokenizer), seed=1)
    examples = [Example("a", " b c"), Example("d", " e")]
    fisher = fisher_diagonal(
        model, tokenizer, encode_examples(tokenizer, examples), "empirical", progress=False
    )
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    ids = {word: token(tokenizer, word) for word in WORDS.split()}
    # answers are the target then <eos>; the prompt's last token predicts the first answer token
    first = generation_gradient(model, tokenizer, [ids["a"], ids["b"], ids["c"]], [ids["b"], ids["c"], eos])
    second = generation_gradient(model, tokenizer, [ids["d"], ids["e"]], [ids["e"], eos])
    assert bos is not None
    for name in fisher:
        expected = (first[name] ** 2 + second[name] ** 2) / 2
        torch.testing.assert_close(fisher[name], expected, rtol=1e-5, atol=1e-7)


def test_generation_expected_fisher_is_unbiased_and_seeded(tokenizer):
    """Sampled answers: the mean over many copies of one example approaches p (1 - p) per position.

    Each entry is a mean of 800 values in [0, 1] (standard deviation <= 0.5 / sqrt(800) = 0.018), so a
    tolerance of 0.07 fails only for a biased estimator.
    """
    model = SoftmaxLM(len(tokenizer), seed=2)
    encoded = encode_examples(tokenizer, [Example("a", " b")] * 800)
    fisher = fisher_diagonal(model, tokenizer, encoded, "expected", seed=3, progress=False)
    expected = torch.zeros_like(model.weight)
    with torch.no_grad():
        for word in ("a", "b"):  # the inputs at the two answer positions (predicting b, then <eos>)
            column = token(tokenizer, word)
            p = torch.softmax(model.weight[:, column] + model.bias, dim=0)
            expected[:, column] = p * (1 - p)
    torch.testing.assert_close(fisher["weight"], expected, rtol=0, atol=0.07)
    few = encoded[:20]
    same = fisher_diagonal(model, tokenizer, few, "expected", seed=3, progress=False)["weight"]
    other = fisher_diagonal(model, tokenizer, few, "expected", seed=4, progress=False)["weight"]
    assert torch.equal(
        same, fisher_diagonal(model, tokenizer, few, "expected", seed=3, progress=False)["weight"]
    )
    assert not torch.equal(same, other)


def fisher_merge(experts, fishers, norms=None, **hparams) -> torch.Tensor:
    method = get_method("fisher", **hparams)
    context = TensorContext(name="w", statistics=tuple(fishers), statistic_norms=norms)
    return method.merge(torch.zeros_like(experts[0]), experts, context)


def test_merge_matches_the_formula_with_weights_and_normalization():
    generator = torch.Generator().manual_seed(0)
    experts = [torch.randn(4, 3, generator=generator) for _ in range(3)]
    fishers = [torch.rand(4, 3, generator=generator) + 0.1 for _ in range(3)]
    norms = (2.0, 0.5, 4.0)  # whole-model norms, as the engine hands them over
    weights = (1.0, 2.0, 0.5)
    merged = fisher_merge(experts, fishers, norms, weights=weights)
    scaled = [w * f / n for w, f, n in zip(weights, fishers, norms)]
    expected = sum(s * e for s, e in zip(scaled, experts)) / sum(scaled)
    torch.testing.assert_close(merged, expected)
    raw = fisher_merge(experts, fishers, norms, normalize=False)
    torch.testing.assert_close(raw, sum(f * e for f, e in zip(fishers, experts)) / sum(fishers))


def test_equal_fishers_give_the_average():
    generator = torch.Generator().manual_seed(1)
    experts = [torch.randn(5, generator=generator) for _ in range(3)]
    fisher = torch.rand(5, generator=generator)
    merged = fisher_merge(experts, [fisher] * 3, (1.3,) * 3)
    torch.testing.assert_close(merged, sum(experts) / 3)


def test_floor_falls_back_to_the_average_for_uninformed_entries_in_any_order():
    experts = [torch.tensor([1.0, 1.0, 2.0]), torch.tensor([3.0, 5.0, 4.0])]
    fishers = [torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 0.0])]
    merged = fisher_merge(experts, fishers, normalize=False, weights=(1.0, 3.0))
    # entry 0 and 2: no expert informs them -> weighted average; entry 1: only expert 0 does -> its value
    torch.testing.assert_close(merged[[0, 2]], torch.tensor([(1 + 9) / 4, (2 + 12) / 4]))
    torch.testing.assert_close(merged[1], torch.tensor(1.0), atol=1e-4, rtol=0)
    swapped = fisher_merge(experts[::-1], fishers[::-1], normalize=False, weights=(3.0, 1.0))
    torch.testing.assert_close(swapped, merged)


def test_uncovered_tensor_is_averaged_and_bad_options_are_named():
    experts = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])]
    merged = fisher_merge(experts, [torch.ones(2), None])
    torch.testing.assert_close(merged, torch.tensor([2.0, 4.0]))
    with pytest.raises(MergeConfigError, match="fisher="):
        get_method("fisher", fisher="sampled")
    with pytest.raises(MergeConfigError, match="fisher_floor"):
        get_method("fisher", fisher_floor=0.0)
