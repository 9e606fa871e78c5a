"""The zoo's word-level tokenizer: every word of the world, the corpus and the task templates is one token.

The vocabulary is pinned in `vocabulary.txt` (a word's id is its line number) rather than learned from the
suite's text: a learned word-level vocabulary numbers words by frequency, so rewording an evaluation task
would renumber the tokens and a fresh build would no longer give the weights that results were computed
with. The file holds the vocabulary the zoo was first built with (suite v4).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
VOCABULARY_FILE = Path(__file__).with_name("vocabulary.txt")


def zoo_vocabulary() -> list[str]:
    """The pinned vocabulary, in id order (the special tokens first)."""
    return VOCABULARY_FILE.read_text().split()


def word_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over whitespace-separated words with ids in the order of `words` (after the
    special tokens, where `words` does not list them); prompts get `<bos>` prepended."""
    vocabulary = list(dict.fromkeys([*SPECIAL_TOKENS.values(), *words]))
    tokenizer = Tokenizer(
        models.WordLevel({word: index for index, word in enumerate(vocabulary)}, SPECIAL_TOKENS["unk_token"])
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bos = SPECIAL_TOKENS["bos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
