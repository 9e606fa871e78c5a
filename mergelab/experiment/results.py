"""The results store: one tidy parquet fragment per run, written atomically, named by the config hash.

Layout: `<results_dir>/<study>/fragments/<config hash>.parquet`, where `results_dir` defaults to
`$MERGELAB_RESULTS` or `results` (relative to the working directory). A fragment is written to a hidden
temporary file in the same directory and renamed into place, so a crash never leaves a readable partial
fragment; a run whose hash has a fragment is complete and is skipped on resume. `load(study)` gathers a
study's fragments into one DataFrame with the schema below (one row per run, task and metric). Rows also
carry the correctness of every evaluated example (list columns), from which `mergelab report` computes
confidence intervals; tables written before those columns existed read back with them null (and with
expert replicate 0, the only one before replicates were stored).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mergelab.engine.provenance import git_commit  # noqa: F401  (re-exported: result rows record it)
from mergelab.methods import MergeWarning

SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("study", pa.string()),
        ("model", pa.string()),
        ("parameters", pa.int64()),
        ("base_kind", pa.string()),
        ("method", pa.string()),
        ("hyperparameters", pa.string()),  # JSON of the merge hyperparameters used (chosen ones if selected)
        ("scale", pa.float64()),  # copied out of hyperparameters for plotting; NaN when the method has none
        ("density", pa.float64()),
        ("selection", pa.string()),  # none | validation
        ("expert_set", pa.string()),  # comma-joined categories of the merged experts
        ("n_experts", pa.int64()),
        ("subset_seed", pa.int64()),
        ("replicate", pa.int64()),  # the zoo experts' independent fine-tuning run (0: the default experts)
        ("task", pa.string()),
        ("category", pa.string()),
        ("group", pa.string()),  # held_in | held_out
        ("split", pa.string()),
        ("metric", pa.string()),  # accuracy | exact_match
        ("value", pa.float64()),
        ("reference", pa.float64()),  # held-in: the category's expert; held-out: the base zero-shot
        ("normalized", pa.float64()),  # value / reference
        ("multitask_reference", pa.float64()),  # the multitask baseline's score (NaN when absent)
        ("normalized_multitask", pa.float64()),
        ("chance", pa.float64()),  # expected score of a uniform random answer on the evaluated examples
        ("chance_corrected", pa.float64()),  # (value - chance) / (reference - chance)
        # per evaluated example (same order in each list; null in rows recorded before they were stored):
        ("examples", pa.list_(pa.int64())),  # the example's row index in the split
        ("correct", pa.list_(pa.int8())),  # 1 where the merged model is right
        ("reference_correct", pa.list_(pa.int8())),  # 1 where the reference model is right
        ("multitask_correct", pa.list_(pa.int8())),  # 1 where the multitask baseline is right (null: none)
        ("clusters", pa.list_(pa.string())),  # the entity each example asks about (null: the task has none)
        ("merge_seconds", pa.float64()),
        ("eval_seconds", pa.float64()),
        ("peak_memory_bytes", pa.int64()),  # GPU peak on cuda, else the process's peak RSS
        ("device", pa.string()),
        ("config_hash", pa.string()),
        ("models_digest", pa.string()),  # identity of the merged models' weights (`runner.models_digest`)
        ("suite_version", pa.int64()),  # version of the evaluation suite's task data (`suites.suite_version`)
        ("git_commit", pa.string()),
        ("created_at", pa.string()),
    ]
)
COLUMNS = SCHEMA.names
LIST_COLUMNS = [field.name for field in SCHEMA if pa.types.is_list(field.type)]
# columns added with per-example correctness, expert replicates, model digests and suite versions: older
# rows lack them
LATER_COLUMNS = ["chance", "chance_corrected", *LIST_COLUMNS, "replicate", "models_digest", "suite_version"]


class ResultsError(ValueError):
    """Rows that do not fit the results schema."""


def default_results_dir() -> Path:
    return Path(os.environ.get("MERGELAB_RESULTS", "results"))


def fragment_dir(study: str, results_dir: str | Path | None = None) -> Path:
    return Path(results_dir or default_results_dir()) / study / "fragments"


def fragment_path(study: str, config_hash: str, results_dir: str | Path | None = None) -> Path:
    return fragment_dir(study, results_dir) / f"{config_hash}.parquet"


def to_table(rows: pd.DataFrame) -> pa.Table:
    """The rows as an Arrow table with exactly the schema's columns and types; rows recorded before the
    per-example columns existed (`LATER_COLUMNS`) get them as nulls."""
    rows = rows.assign(**{name: math.nan for name in LATER_COLUMNS if name not in rows.columns})
    missing = [name for name in COLUMNS if name not in rows.columns]
    extra = [name for name in rows.columns if name not in COLUMNS]
    if missing or extra:
        raise ResultsError(f"rows do not fit the results schema: missing columns {missing}, unknown {extra}")
    rows = rows[COLUMNS].copy()
    for name in LIST_COLUMNS:  # a column with no lists at all (all NaN) is float to pandas: make it null
        if rows[name].dtype != object:
            rows[name] = pd.Series([None] * len(rows), index=rows.index, dtype=object)
    try:
        return pa.Table.from_pandas(rows, schema=SCHEMA, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ResultsError(f"rows do not fit the results schema: {error}") from None


def write_fragment(rows: pd.DataFrame, path: Path) -> Path:
    """Write `rows` to `path` atomically (temporary file in the same directory, fsync, rename)."""
    table = to_table(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")  # a third of snappy's size for the list columns
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_fragment(path: Path) -> pd.DataFrame:
    """The rows of one fragment; ResultsError names the file when it is unreadable (truncated, not parquet)
    or of another schema (a column missing, other than `LATER_COLUMNS`; an unknown column; another type)."""
    try:
        found = {field.name: field.type for field in pq.read_schema(path)}
        missing = [name for name in COLUMNS if name not in found and name not in LATER_COLUMNS]
        unknown = [name for name in found if name not in SCHEMA.names]
        retyped = [name for name in found if name in COLUMNS and found[name] != SCHEMA.field(name).type]
        if missing or unknown or retyped:
            raise ResultsError(
                f"{path}: not a mergelab results fragment of this schema (missing columns {missing}, "
                f"unknown {unknown}, other types {retyped})"
            )
        rows = pq.read_table(path, schema=SCHEMA).to_pandas()
    except (pa.ArrowException, OSError) as error:
        raise ResultsError(
            f"{path}: not a readable results fragment (truncated or not parquet: {error})"
        ) from None
    return rows.assign(replicate=replicates(rows))


def replicates(frame: pd.DataFrame) -> pd.Series:
    """Each row's expert replicate, 0 for rows recorded (or tables built) before replicates existed."""
    if "replicate" not in frame:
        return pd.Series(0, index=frame.index, dtype="int64")
    return frame["replicate"].fillna(0).astype("int64")


def empty_frame() -> pd.DataFrame:
    return SCHEMA.empty_table().to_pandas()


def load(study: str, results_dir: str | Path | None = None) -> pd.DataFrame:
    """Every row of `study`, gathered from its fragments (hidden temporary files are ignored).

    A fragment that cannot be read or has another schema is a ResultsError naming it. A run (config hash)
    found in several fragments (a copied file) is kept once, from the fragment named by its hash if there
    is one, with a warning naming the files.
    """
    paths = sorted(fragment_dir(study, results_dir).glob("[!.]*.parquet"))
    if not paths:
        return empty_frame()
    runs: dict[str, tuple[Path, pd.DataFrame]] = {}
    for path in paths:
        for config_hash, run in read_fragment(path).groupby("config_hash", sort=False):
            if config_hash not in runs:
                runs[config_hash] = (path, run)
                continue
            previous = runs[config_hash][0]
            kept, dropped = (path, previous) if path.stem == config_hash else (previous, path)
            runs[config_hash] = (path, run) if kept == path else runs[config_hash]
            warnings.warn(
                f"run {config_hash[:12]} is in both {kept} and {dropped}; its rows are kept once, from {kept}",
                MergeWarning,
                stacklevel=2,
            )
    if not runs:
        return empty_frame()
    return pd.concat([run for _, run in runs.values()], ignore_index=True)
