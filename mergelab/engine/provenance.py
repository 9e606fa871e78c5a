"""How a merged directory says it was made: `mergelab.json` (the resolved merge) and a `README.md` model card.

`mergelab.json` is also the marker that mergelab wrote a directory: `overwrite=true` replaces only
directories that have one (`mergelab.engine.placement`). Its schema is fixed:
`{"mergelab_version", "git_commit", "merge": {"method", "base", "experts", "hparams", "options"}}`, with
local inputs as absolute paths, hub ids as given and in-memory state dicts as "<state dict>". Nothing in it
depends on time or on the output path, so the same merge writes the same bytes.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mergelab.engine.checkpoint import CheckpointError

PROVENANCE_FILE = "mergelab.json"
MODEL_CARD_FILE = "README.md"
STATE_DICT_INPUT = "<state dict>"


def git_commit() -> str:
    """The commit of the mergelab checkout (with '-dirty' for local changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def mergelab_version() -> str:
    """The installed distribution's version ('unknown' when mergelab runs from a tree that is not installed)."""
    try:
        return metadata.version("mergelab")
    except metadata.PackageNotFoundError:
        return "unknown"


def input_name(reference: object) -> str:
    """How an input is recorded: an existing local path made absolute, a hub id as given, a state dict as such."""
    if isinstance(reference, Mapping):
        return STATE_DICT_INPUT
    path = Path(reference).expanduser()
    return str(path.resolve()) if path.exists() else str(reference)


def merge_record(
    method: str,
    hparams: Mapping[str, Any],
    base: object,
    experts: Sequence[object],
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """The `mergelab.json` content for one merge: `hparams` are the method's resolved hyperparameters and
    `options` the merge options that exist (device, max_shard_size, ...)."""
    record = {
        "mergelab_version": mergelab_version(),
        "git_commit": git_commit(),
        "merge": {
            "method": method,
            "base": input_name(base),
            "experts": [input_name(expert) for expert in experts],
            "hparams": _plain(dict(hparams)),
            "options": _plain(dict(options)),
        },
    }
    try:
        json.dumps(record)
    except (TypeError, ValueError) as error:  # checked before any work, not when the output is finished
        raise CheckpointError(
            f"method '{method}': hyperparameters and options must be numbers, strings, booleans or lists "
            f"of them to be recorded in {PROVENANCE_FILE} ({error})"
        ) from None
    return record


def _plain(value: Any) -> Any:
    """`value` with tuples as lists, so the record equals what reading its JSON back gives."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def model_card(record: Mapping[str, Any]) -> str:
    """A Hugging Face model card: YAML front matter with the whole merge, and a short body saying how."""
    merge = record["merge"]
    front = {
        "base_model": merge["base"],
        "tags": ["merge", "mergelab"],
        "merge_method": merge["method"],
        "merge_hparams": merge["hparams"],
        "experts": merge["experts"],
        "mergelab_version": record["mergelab_version"],
        "mergelab_commit": record["git_commit"],
    }
    settings = ", ".join(f"`{key}={_hydra_value(value)}`" for key, value in merge["hparams"].items())
    expert_lines = "\n".join(f"- `{expert}`" for expert in merge["experts"])
    return (
        "---\n"
        + yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
        + "---\n\n"
        + "# Merged model\n\n"
        + f"Made with mergelab {record['mergelab_version']} (commit `{record['git_commit']}`) by merging "
        + f"{len(merge['experts'])} expert(s) into the base `{merge['base']}` with `{merge['method']}`"
        + (f" ({settings})" if settings else "")
        + ".\n\nExperts:\n\n"
        + expert_lines
        + f"\n\n`{PROVENANCE_FILE}` beside this card holds the resolved merge: method, every "
        + "hyperparameter, the inputs and the options.\n"
    )


def _hydra_value(value: Any) -> str:
    """A hyperparameter as it is written on the `mergelab merge` command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(item) for item in value) + "]"
    return str(value)


def write_provenance(directory: Path, record: Mapping[str, Any]) -> None:
    """Write `mergelab.json` and `README.md` into `directory` (the output's temporary directory)."""
    (directory / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    (directory / MODEL_CARD_FILE).write_text(model_card(record))
