"""Merging from a configuration file: a merged directory's `mergelab.json` (reproduced exactly) or a
mergekit YAML file (`mergelab.api.mergekit_config`).

`mergelab.json` records one merge: `{"mergelab_version", "git_commit", "merge": {"method", "base",
"experts", "hparams", "options"}}`, inputs as absolute paths (a state-dict input as "<state dict>") and the
options that shape the output (`device`, `max_shard_size`, `data` for data-aware methods, `out_dtype`,
`dtype`, `tokenizer_source`, `chat_template`, where present). Merging it again with the same mergelab gives the same bytes, since a
merge is deterministic in its inputs, method, hyperparameters and these options.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mergelab.api.mergekit_config import merge_from_yaml
from mergelab.methods import MergeConfigError

PROVENANCE_FILE = "mergelab.json"
RECORDED_OPTIONS = (
    "device",
    "max_shard_size",
    "data",
    "out_dtype",
    "dtype",
    "tokenizer_source",
    "chat_template",
)
STATE_DICT_INPUT = "<state dict>"


class ProvenanceError(MergeConfigError):
    """A `mergelab.json` that does not describe a merge mergelab can run again."""


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The `mergelab.merge` keyword arguments (base, experts, method, options, hyperparameters) recorded in
    the `mergelab.json` at `path`, checked against the schema."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ProvenanceError(f"{path}: cannot read it as JSON: {error}") from None
    merge = record.get("merge") if isinstance(record, Mapping) else None
    if not isinstance(merge, Mapping) or "mergelab_version" not in record:
        raise ProvenanceError(f"{path}: not a mergelab.json (needs 'mergelab_version' and a 'merge' object)")
    missing = [key for key in ("method", "base", "experts", "hparams") if key not in merge]
    if missing:
        raise ProvenanceError(f"{path}: merge.{missing[0]} is missing")
    inputs = [merge["base"], *merge["experts"]] if isinstance(merge["experts"], list) else None
    if inputs is None or not all(isinstance(ref, str) for ref in inputs):
        raise ProvenanceError(f"{path}: merge.base must be a string and merge.experts a list of strings")
    if STATE_DICT_INPUT in inputs:
        raise ProvenanceError(f"{path}: the merge had an in-memory state dict as input; it cannot be rerun")
    options = merge.get("options") or {}
    unknown = sorted(set(options) - set(RECORDED_OPTIONS))
    if unknown:
        raise ProvenanceError(f"{path}: merge.options.{unknown[0]} is not a recorded option")
    if not isinstance(merge["hparams"], Mapping):
        raise ProvenanceError(f"{path}: merge.hparams must be an object")
    return {
        "base": merge["base"],
        "experts": list(merge["experts"]),
        "method": merge["method"],
        **options,
        **merge["hparams"],
    }


def merge_from_provenance(path: str | Path, out: str | Path | None = None, **options: Any):
    """Run again the merge recorded in the `mergelab.json` at `path`, into `out`. `options` are the run
    options the file does not fix (`overwrite`, `progress`)."""
    import mergelab
    from mergelab.api.merging import merge

    arguments = read_provenance(path)
    recorded = json.loads(Path(path).read_text())["mergelab_version"]
    if recorded != mergelab.__version__:
        print(
            f"mergelab: note: {path} was written by mergelab {recorded}, this is {mergelab.__version__}; "
            "the result may differ",
            file=sys.stderr,
        )
    return merge(out=out, **arguments, **options)


def merge_from_config(path: str | Path, out: str | Path | None = None, **options: Any):
    """`mergelab merge config=PATH`: a `mergelab.json` (or a directory holding one) is merged again
    exactly; any other file is read as a mergekit YAML configuration."""
    path = Path(path)
    if path.is_dir():
        path = path / PROVENANCE_FILE
    if not path.is_file():
        raise MergeConfigError(f"config={path}: no such file")
    if path.suffix == ".json":
        fixed = sorted(set(options) - {"overwrite", "progress"})
        if fixed:
            raise MergeConfigError(
                f"config={path}: the file fixes {fixed[0]} (as recorded); give only out, overwrite, progress"
            )
        return merge_from_provenance(path, out, **options)
    return merge_from_yaml(path, out, **options)
