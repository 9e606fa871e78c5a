"""A tiny real T5 family for the seq2seq tests: a word-level tokenizer shaped like T5's, a base and experts.

The tokenizer keeps T5's conventions that the evaluators rely on: `<pad>` is id 0 (also the decoder start
token), `</s>` is id 1 and is appended to every encoded text, unknown words map to `<unk>`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import fine_tune_like, tiny_t5

WORDS = (
    "yes no true false maybe positive negative great terrible sports world business science "
    "question answer premise hypothesis does it follow that the a an is was what who which of to in on "
    "movie review film story paragraph topic about same meaning sentence one two choice option best "
    "summary dialogue concept write text red blue green cat dog bird tree river city king queen"
).split()


def t5_like_tokenizer():
    """A `PreTrainedTokenizerFast` over `WORDS` (ids < 96, the tiny T5's vocabulary) appending `</s>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {word: 3 + index for index, word in enumerate(WORDS)}
    assert len(vocab) <= 96
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def save_t5_family(root: Path, n_experts: int, noise: float = 0.5) -> dict:
    """A tiny T5 base and `n_experts` perturbed copies, each saved with the tokenizer."""
    tokenizer = t5_like_tokenizer()
    base = tiny_t5()
    paths = {"base": root / "base", "experts": []}
    base.save_pretrained(paths["base"])
    tokenizer.save_pretrained(paths["base"])
    for index in range(n_experts):
        path = root / f"expert{index}"
        fine_tune_like(base, seed=200 + index, noise=noise).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths["experts"].append(path)
    return paths


@torch.no_grad()
def unbatched_score(model, tokenizer, prompt: str, choice: str) -> tuple[float, int]:
    """Sum of log p(target token) for one (prompt, choice), decoder inputs built by hand; and its length."""
    input_ids = torch.tensor([tokenizer(prompt).input_ids])
    target = tokenizer(choice).input_ids  # with </s>, as T0's evaluation
    decoder_input_ids = torch.tensor([[model.config.decoder_start_token_id, *target[:-1]]])
    logits = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return float(sum(log_probs[position, token] for position, token in enumerate(target))), len(target)


def unbatched_picks(model, tokenizer, prompts, choices) -> list[int]:
    """Index of the highest `unbatched_score` per example (first one on ties)."""
    picks = []
    for prompt, options in zip(prompts, choices):
        totals = [unbatched_score(model, tokenizer, prompt, option)[0] for option in options]
        picks.append(max(range(len(options)), key=totals.__getitem__))
    return picks
