"""The merged model's tokenizer and chat template, and experts whose vocabulary differs from the base's.

`tokenizer_source` picks the output vocabulary: `base` (the default: every checkpoint must have the base's
embedding shapes, else the engine's shape error), `expert:<i>` (expert i's tokenizer and vocabulary) or
`union` (the base's tokens in the base's order, then each expert's tokens the base lacks, in expert order
and each expert's id order). Checkpoints whose vocabulary differs from the target are presented to the
engine through `RemappedCheckpoint`: the rows of their embedding and LM-head tensors are reordered by token
into the target vocabulary, so the merge itself runs as usual. A row a checkpoint lacks is filled in:

- for the base, with the mean of its rows (the mean embedding);
- for an expert, with the base's row for that token (or the base's fill, the mean embedding, when the base
  lacks it too), so the expert's task vector is zero there and the row merges from the experts that have it.

`chat_template` picks whose chat template the output carries: `base`, `expert:<i>`, or (unset) the
tokenizer source's. Files are copied byte for byte whenever nothing changes; a union tokenizer is written
with `save_pretrained`.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mergelab.engine.checkpoint import (
    _VOCAB_TENSOR,
    SIDECAR_PATTERNS,
    Checkpoint,
    CheckpointError,
    TensorInfo,
)
from mergelab.methods import MergeConfigError

TOKENIZER_PATTERNS = tuple(
    name for name in SIDECAR_PATTERNS if name not in ("config.json", "generation_config.json")
)
CHAT_TEMPLATE_FILE = "chat_template.jinja"
_EXPERT_CHOICE = re.compile(r"expert:(\d+)")


@dataclass(frozen=True)
class TokenizerChoice:
    """Where the output's tokenizer (`base`, `expert:<i>`, `union`) and chat template come from."""

    tokenizer_source: str = "base"
    chat_template: str | None = None  # None: the tokenizer source's (the base's for `union`)

    @property
    def is_default(self) -> bool:
        return self.tokenizer_source == "base" and self.chat_template in (None, "base")


def _expert_index(value: str) -> int | None:
    match = _EXPERT_CHOICE.fullmatch(value)
    return int(match.group(1)) if match else None


def _check_choice(option: str, value: str, allowed: tuple[str, ...], n_experts: int) -> None:
    index = _expert_index(str(value))
    if index is None and value not in allowed:
        raise MergeConfigError(f"{option}={value!r} is not one of {' | '.join([*allowed, 'expert:<i>'])}")
    if index is not None and index >= n_experts:
        raise MergeConfigError(
            f"{option}={value}: there are {n_experts} experts (expert:0 .. expert:{n_experts - 1})"
        )


def parse_tokenizer_choice(
    tokenizer_source: str = "base", chat_template: str | None = None, n_experts: int = 0
) -> TokenizerChoice:
    """The checked choice; an expert index must name one of the `n_experts` experts."""
    _check_choice("tokenizer_source", tokenizer_source, ("base", "union"), n_experts)
    if chat_template is not None:
        _check_choice("chat_template", chat_template, ("base",), n_experts)
    return TokenizerChoice(tokenizer_source, chat_template)


def _directory(checkpoint: Checkpoint, option: str) -> Path:
    if checkpoint.directory is None:
        raise CheckpointError(f"{option}: {checkpoint.label} must be a model directory to read its tokenizer")
    return checkpoint.directory


def _vocab_rows(checkpoint: Checkpoint) -> int:
    path = _directory(checkpoint, "tokenizer_source") / "config.json"
    try:
        config = json.loads(path.read_text())
        return int(config.get("vocab_size") or config["text_config"]["vocab_size"])
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise CheckpointError(f"tokenizer_source: cannot read vocab_size from {path} ({error})") from None


def _load_tokenizer(checkpoint: Checkpoint):
    from transformers import AutoTokenizer

    directory = _directory(checkpoint, "tokenizer_source")
    try:
        return AutoTokenizer.from_pretrained(directory)
    except Exception as error:  # transformers raises several types for a missing or broken tokenizer
        raise CheckpointError(
            f"tokenizer_source: cannot load the tokenizer of {checkpoint.label} ({error})"
        ) from None


def union_tokenizer(base_tokenizer, expert_tokenizers: Sequence):
    """The base's tokenizer plus each expert's tokens it lacks (expert order, then id order), keeping each
    added token's settings (special, normalized, ...)."""
    from tokenizers import AddedToken

    known = set(base_tokenizer.get_vocab())
    for tokenizer in expert_tokenizers:
        added = tokenizer.added_tokens_decoder
        for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
            if token in known:
                continue
            entry = added.get(token_id) or AddedToken(token, normalized=False)
            base_tokenizer.add_tokens([entry], special_tokens=entry.special)
            known.add(token)
    return base_tokenizer


@dataclass(frozen=True)
class TargetVocabulary:
    """The output vocabulary: the token of each embedding row (None for padding rows past the tokenizer)."""

    tokens: tuple[str | None, ...]

    @classmethod
    def of(cls, tokenizer, rows: int) -> TargetVocabulary:
        by_id: dict[int, str] = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
        size = max(rows, max(by_id, default=-1) + 1)
        return cls(tuple(by_id.get(index) for index in range(size)))

    def sources(self, vocab: dict[str, int], rows: int) -> list[int | None]:
        """For each target row, the row of a checkpoint with `vocab` and `rows` that holds it, or None."""
        sources: list[int | None] = []
        for index, token in enumerate(self.tokens):
            if token is None:
                sources.append(index if index < rows else None)
            else:
                row = vocab.get(token)
                sources.append(row if row is not None and row < rows else None)
        return sources


class RemappedCheckpoint:
    """A checkpoint whose vocabulary tensors are served with rows in the target vocabulary's order.

    Rows it lacks come from `fill`: for the base, None (its mean row); for an expert, the remapped base, so a
    missing row equals the base's and the expert's task vector is zero there.
    """

    def __init__(
        self,
        inner: Checkpoint,
        vocab_names: set[str],
        sources: list[int | None],
        fill: RemappedCheckpoint | None,
    ) -> None:
        self.inner = inner
        self.label = inner.label
        self.directory = inner.directory
        self.vocab_names = vocab_names
        self.fill = fill
        self._index = torch.tensor([0 if row is None else row for row in sources], dtype=torch.long)
        self._missing = torch.tensor([row is None for row in sources], dtype=torch.bool)
        # The base keeps its last vocabulary tensor: the reader asks the base, then each expert for its fill.
        self._last: tuple[str, torch.Tensor] | None = None

    def infos(self) -> dict[str, TensorInfo]:
        infos = self.inner.infos()
        rows = len(self._index)
        for name in self.vocab_names:
            infos[name] = TensorInfo(infos[name].dtype, (rows, *infos[name].shape[1:]))
        return infos

    def get(self, name: str) -> torch.Tensor:
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        tensor = self.inner.get(name)
        if name not in self.vocab_names:
            return tensor
        remapped = tensor.index_select(0, self._index)
        if bool(self._missing.any()):
            if self.fill is None:
                filler = tensor.float().mean(dim=0).to(tensor.dtype).expand_as(remapped)
            else:
                filler = self.fill.get(name).to(tensor.dtype)
            remapped[self._missing] = filler[self._missing]
        if self.fill is None:
            self._last = (name, remapped)
        return remapped

    def close(self) -> None:
        self.inner.close()


@dataclass
class VocabularyPlan:
    """What `plan_vocabulary` decided: the checkpoints to merge and how to write the tokenizer."""

    choice: TokenizerChoice
    base: Checkpoint
    experts: list[Checkpoint]
    target_rows: int | None = None  # set when the output's vocabulary size differs from the base's
    tokenizer: object | None = None  # a union tokenizer to save; None: copy files
    # The chat template to write (a string, or transformers' list of named templates) when one was chosen.
    chat_template: str | list | None = None

    def write(self, out_dir: Path) -> None:
        """Replace the base's tokenizer files copied into `out_dir` by the chosen tokenizer and chat template,
        and make `config.json`'s `vocab_size` match the merged embeddings."""
        index = _expert_index(self.choice.tokenizer_source)
        if index is not None:
            _remove_tokenizer_files(out_dir)
            for path in tokenizer_files(self.experts[index].directory):
                shutil.copy2(path, out_dir / path.name)
        elif self.tokenizer is not None:
            _remove_tokenizer_files(out_dir)
            self.tokenizer.save_pretrained(out_dir)
        if self.choice.chat_template is not None:
            _write_chat_template(out_dir, self.chat_template)
        config_path = out_dir / "config.json"
        if self.target_rows is not None and config_path.is_file():
            config = json.loads(config_path.read_text())
            config["vocab_size"] = self.target_rows
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def tokenizer_files(directory: Path | None) -> list[Path]:
    """The tokenizer files (tokenizer, its config, vocabularies, chat template) in `directory`."""
    if directory is None:
        return []
    found = {path for pattern in TOKENIZER_PATTERNS for path in directory.glob(pattern) if path.is_file()}
    return sorted(found)


def _remove_tokenizer_files(directory: Path) -> None:
    for path in tokenizer_files(directory):
        path.unlink()


def read_chat_template(directory: Path | None) -> str | list | None:
    """The chat template saved in a model directory: `chat_template.jinja`, else `tokenizer_config.json`'s."""
    if directory is None:
        return None
    if (directory / CHAT_TEMPLATE_FILE).is_file():
        return (directory / CHAT_TEMPLATE_FILE).read_text()
    try:
        return json.loads((directory / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, json.JSONDecodeError):
        return None


def _write_chat_template(directory: Path, template: str | list) -> None:
    """Make `template` the only chat template in `directory` (a string goes to `chat_template.jinja`)."""
    (directory / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config.pop("chat_template", None)
    if isinstance(template, str):
        (directory / CHAT_TEMPLATE_FILE).write_text(template)
    else:
        config["chat_template"] = template
    if config or config_path.is_file():
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _vocab_tensors(checkpoint: Checkpoint, rows: int) -> set[str]:
    return {
        name
        for name, info in checkpoint.infos().items()
        if _VOCAB_TENSOR.search(name) and len(info.shape) == 2 and info.shape[0] == rows
    }


def plan_vocabulary(
    choice: TokenizerChoice, base: Checkpoint, experts: Sequence[Checkpoint]
) -> VocabularyPlan:
    """The base and experts as the engine should merge them for `choice` (remapped where needed), the
    output's tokenizer and its chat template; everything is read and checked before anything is written."""
    plan = _align_vocabularies(choice, base, experts)
    if choice.chat_template is not None:
        index = _expert_index(choice.chat_template)
        source = base if index is None else experts[index]
        plan.chat_template = read_chat_template(_directory(source, "chat_template"))
        if plan.chat_template is None:
            raise CheckpointError(
                f"chat_template={choice.chat_template}: {source.label} has no chat template"
            )
    return plan


def _align_vocabularies(
    choice: TokenizerChoice, base: Checkpoint, experts: Sequence[Checkpoint]
) -> VocabularyPlan:
    if choice.tokenizer_source == "base":
        return VocabularyPlan(choice, base, list(experts))
    checkpoints = [base, *experts]
    tokenizers = [_load_tokenizer(checkpoint) for checkpoint in checkpoints]
    rows = [_vocab_rows(checkpoint) for checkpoint in checkpoints]
    index = _expert_index(choice.tokenizer_source)
    tokenizer = None
    if index is None:
        vocabs_before = len(tokenizers[0].get_vocab())
        tokenizer = union_tokenizer(_load_tokenizer(base), tokenizers[1:])
        target = TargetVocabulary.of(tokenizer, rows[0])
        if len(tokenizer.get_vocab()) == vocabs_before:
            tokenizer = None  # nothing added: the base's files are the union's
    else:
        target = TargetVocabulary.of(tokenizers[index + 1], rows[index + 1])
    remapped = [
        (checkpoint, target.sources(checkpoint_tokenizer.get_vocab(), checkpoint_rows), checkpoint_rows)
        for checkpoint, checkpoint_tokenizer, checkpoint_rows in zip(checkpoints, tokenizers, rows)
    ]
    if all(sources == list(range(count)) for _, sources, count in remapped):
        return VocabularyPlan(choice, base, list(experts), None, tokenizer)
    aligned: list[RemappedCheckpoint] = []
    for checkpoint, sources, checkpoint_rows in remapped:
        names = _vocab_tensors(checkpoint, checkpoint_rows)
        if not names:
            raise CheckpointError(
                f"tokenizer_source={choice.tokenizer_source}: {checkpoint.label} has no embedding or LM-head "
                f"tensor with its {checkpoint_rows} vocabulary rows"
            )
        # The base is wrapped even when its rows stay put: it then serves each expert's fill from memory.
        aligned.append(RemappedCheckpoint(checkpoint, names, sources, aligned[0] if aligned else None))
    target_rows = len(target.tokens) if len(target.tokens) != rows[0] else None
    return VocabularyPlan(choice, aligned[0], list(aligned[1:]), target_rows, tokenizer)
