"""The results store: schema, atomic fragments, resume lookups, loading a study."""

from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mergelab.experiment import results


def make_rows(config_hash: str, tasks: dict[str, tuple[str, str, float, float]], **overrides) -> pd.DataFrame:
    """Rows of one run; `tasks` maps task -> (category, group, value, reference)."""
    facts = {
        "run_id": f"study-{config_hash[:12]}",
        "study": "study",
        "model": "micro",
        "parameters": 1000,
        "base_kind": "base",
        "method": "ties",
        "hyperparameters": '{"scale": 1.0}',
        "scale": 1.0,
        "density": 0.2,
        "selection": "none",
        "expert_set": "a,b",
        "n_experts": 2,
        "subset_seed": 0,
        "replicate": 0,
        "split": "test",
        "metric": "accuracy",
        "merge_seconds": 0.5,
        "eval_seconds": 1.5,
        "peak_memory_bytes": 2**20,
        "device": "cpu",
        "config_hash": config_hash,
        "models_digest": "0123456789abcdef",
        "git_commit": "abc",
        "created_at": "2026-11-23T00:00:00+00:00",
    } | overrides
    rows = []
    for task, (category, group, value, reference) in tasks.items():
        rows.append(
            facts
            | {
                "task": task,
                "category": category,
                "group": group,
                "value": value,
                "reference": reference,
                "normalized": value / reference if reference else math.nan,
                "multitask_reference": math.nan,
                "normalized_multitask": math.nan,
                "chance": math.nan,
                "chance_corrected": math.nan,
                **dict.fromkeys(results.LIST_COLUMNS),  # no per-example data, as in rows recorded before it
            }
        )
    return pd.DataFrame(rows, columns=results.COLUMNS)


TASKS = {"t1": ("a", "held_in", 0.5, 1.0), "t2": ("b", "held_out", 0.25, 0.5)}


def test_fragment_round_trips_with_the_schema(tmp_path):
    rows = make_rows("h1", TASKS)
    path = results.write_fragment(rows, results.fragment_path("study", "h1", tmp_path))
    assert path == tmp_path / "study" / "fragments" / "h1.parquet"
    back = results.read_fragment(path)
    assert list(back.columns) == results.COLUMNS
    pd.testing.assert_frame_equal(back, rows, check_dtype=False)
    assert str(back["parameters"].dtype) == "int64" and str(back["value"].dtype) == "float64"


def test_load_gathers_every_fragment_and_ignores_temporary_files(tmp_path):
    results.write_fragment(make_rows("h1", TASKS), results.fragment_path("study", "h1", tmp_path))
    results.write_fragment(
        make_rows("h2", TASKS, method="dare"), results.fragment_path("study", "h2", tmp_path)
    )
    (tmp_path / "study" / "fragments" / ".h3.parquet.tmp-1").write_bytes(b"PAR1 partial")
    table = results.load("study", tmp_path)
    assert len(table) == 4
    assert sorted(table["config_hash"].unique()) == ["h1", "h2"]
    assert set(table["method"]) == {"ties", "dare"}
    empty = results.load("missing", tmp_path)
    assert empty.empty and list(empty.columns) == results.COLUMNS


def test_a_failure_mid_write_leaves_no_readable_partial_fragment(tmp_path, monkeypatch):
    path = results.fragment_path("study", "h1", tmp_path)
    results.write_fragment(make_rows("h1", TASKS), path)
    before = path.read_bytes()

    def write_half_then_fail(table, handle, **kwargs):
        handle.write(b"PAR1" + b"\0" * 64)
        raise OSError("disk full")

    monkeypatch.setattr(results.pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        results.write_fragment(make_rows("h1", TASKS, method="dare"), path)
    with pytest.raises(OSError, match="disk full"):
        results.write_fragment(make_rows("h2", TASKS), results.fragment_path("study", "h2", tmp_path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["h1.parquet"]
    assert set(results.load("study", tmp_path)["method"]) == {"ties"}


def test_rows_that_do_not_fit_the_schema_are_refused_by_name(tmp_path):
    rows = make_rows("h1", TASKS).drop(columns=["peak_memory_bytes"])
    with pytest.raises(results.ResultsError, match=r"missing columns \['peak_memory_bytes'\]"):
        results.write_fragment(rows, tmp_path / "x.parquet")
    rows = make_rows("h1", TASKS)
    rows["value"] = "high"
    with pytest.raises(results.ResultsError, match="schema"):
        results.write_fragment(rows, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_results_dir_defaults_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGELAB_RESULTS", str(tmp_path))
    assert results.fragment_dir("s") == tmp_path / "s" / "fragments"
    monkeypatch.delenv("MERGELAB_RESULTS")
    assert str(results.fragment_dir("s")) == "results/s/fragments"


def test_git_commit_names_this_checkout():
    commit = results.git_commit()
    assert commit == "unknown" or len(commit.split("-")[0]) == 40


def test_rows_recorded_before_per_example_columns_still_write(tmp_path):
    old = make_rows("h", TASKS).drop(columns=results.LATER_COLUMNS)
    path = results.write_fragment(old, tmp_path / "old.parquet")
    back = results.read_fragment(path)
    assert back["correct"].isna().all() and back["chance"].isna().all()
    assert list(back["value"]) == list(old["value"])
    with pytest.raises(results.ResultsError, match=r"missing columns \['value'\]"):
        results.to_table(old.drop(columns=["value"]))


def test_rows_recorded_before_replicates_read_back_as_replicate_0(tmp_path):
    rows = make_rows("h1", TASKS).drop(columns=["replicate"])
    path = tmp_path / "old.parquet"
    schema = pa.schema([field for field in results.SCHEMA if field.name != "replicate"])
    pq.write_table(pa.Table.from_pandas(rows, schema=schema, preserve_index=False), path)
    back = results.read_fragment(path)
    assert back["replicate"].tolist() == [0, 0] and str(back["replicate"].dtype) == "int64"
