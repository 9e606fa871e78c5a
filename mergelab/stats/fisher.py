"""Diagonal Fisher information of a causal LM on its task data (Matena & Raffel, 2022).

`F = 1/N sum_n E_y[(d log p(y | x_n) / d theta)^2]`, entry by entry, with two estimators:

- `expected` (the authors' code): for a classification example, the model's distribution over the answer
  choices, `q = softmax(score_c)` with `score_c` the summed token log-probability of choice c (the classifier
  that rank classification evaluates), and `sum_c q_c (d log q_c)^2`. For a generation example the exact
  expectation over every answer sequence is out of reach, so one answer token is sampled at every answer
  position from the model's next-token distribution given the (teacher-forced) target prefix; the squared
  gradient of the sampled tokens' summed log-probability is an unbiased estimate of the sum over positions
  of the per-position expected Fisher (cross terms have expectation zero because each position's score has
  mean zero under its own sample). Samples come from a generator seeded with `seed`.
- `empirical`: the squared gradient of the log-probability of the label (`log q_label` for classification,
  the target tokens' summed log-probability for generation).

Per-example gradients come from a loop of backward passes, one per example (and per choice for the
expected estimator, reusing that example's forward pass with `retain_graph`): this is exact, works with any
`transformers` causal LM (no `torch.func.functional_call`/`vmap` restrictions on attention kernels, masks or
in-place ops), and costs no more than vmap on CPU for the zoo's small models.

Parameters are the model's `named_parameters()`, which lists a tied tensor (an `lm_head` sharing the
embedding) once under the name the checkpoint stores; its gradient sums both uses, which is the Fisher of
the one shared tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mergelab.eval.choices import causal_lm_batch, token_log_prob_sums
from mergelab.eval.inputs import padding_id
from mergelab.stats.encode import EncodedExample

ESTIMATORS = ("expected", "empirical")


def _accumulate(
    sums: list[torch.Tensor],
    objective: torch.Tensor,
    params: Sequence[torch.Tensor],
    weight: float,
    retain: bool,
) -> None:
    """sums += weight * (d objective / d params)^2."""
    grads = torch.autograd.grad(objective, params, retain_graph=retain, allow_unused=True)
    for total, grad in zip(sums, grads):
        if grad is not None:
            total.addcmul_(grad.float(), grad.float(), value=weight)


def _classification(model, example: EncodedExample, estimator: str, pad_id: int, params, sums) -> None:
    rows = [(0, index, example.prompt, answer) for index, answer in enumerate(example.answers)]
    input_ids, attention_mask, targets = causal_lm_batch(rows, pad_id)
    device = sums[0].device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    log_q = torch.log_softmax(token_log_prob_sums(logits, targets.to(device)), dim=-1)
    if estimator == "empirical":
        terms = [(example.label, 1.0)]
    else:
        terms = list(enumerate(log_q.detach().exp().tolist()))
    for position, (choice, weight) in enumerate(terms):
        _accumulate(sums, log_q[choice], params, weight, retain=position < len(terms) - 1)


def _generation(model, example: EncodedExample, estimator: str, generator, params, sums) -> None:
    prompt, answer = example.prompt, example.target
    device = sums[0].device
    input_ids = torch.tensor([prompt + answer], device=device)
    logits = model(input_ids=input_ids).logits[0, len(prompt) - 1 : len(prompt) + len(answer) - 1]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    if estimator == "empirical":
        tokens = torch.tensor(answer, device=device)
    else:
        probabilities = log_probs.detach().exp().cpu()
        tokens = torch.multinomial(probabilities, 1, generator=generator).squeeze(-1).to(device)
    objective = log_probs.gather(-1, tokens.unsqueeze(-1)).sum()
    _accumulate(sums, objective, params, 1.0, retain=False)


def fisher_diagonal(
    model,
    tokenizer,
    examples: Sequence[EncodedExample],
    estimator: str = "expected",
    *,
    seed: int = 0,
    progress: bool = True,
    desc: str = "fisher",
) -> dict[str, torch.Tensor]:
    """The diagonal Fisher of `model` (float32, on its device) averaged over `examples`, per parameter name."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown Fisher estimator '{estimator}'; valid: {list(ESTIMATORS)}")
    if not examples:
        raise ValueError("the Fisher needs at least one example")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad and p.is_floating_point()]
    params = [p for _, p in named]
    sums = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params]
    pad_id = padding_id(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for example in tqdm(examples, desc=desc, disable=not progress, unit="ex", leave=False):
            if example.is_classification:
                _classification(model, example, estimator, pad_id, params, sums)
            else:
                _generation(model, example, estimator, generator, params, sums)
    finally:
        model.train(was_training)
    return {name: total / len(examples) for (name, _), total in zip(named, sums)}
