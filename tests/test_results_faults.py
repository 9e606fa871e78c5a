"""Results that are not what they claim: truncated or foreign fragments, copies of one run (issue 16, Results)."""

from __future__ import annotations

import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mergelab.experiment import report, results, runner
from mergelab.experiment.config import validate
from mergelab.experiment.sweep import compose
from mergelab.methods import MergeWarning
from tests.test_results import TASKS, make_rows
from tests.zoo_fixture import micro_run_overrides

HASH = "a" * 64


def write_truncated(path):
    results.write_fragment(make_rows(HASH, TASKS), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_foreign(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"run": ["x"], "score": [1.0]}), path)


@pytest.mark.parametrize(("damage", "message"), [(write_truncated, "truncated"), (write_foreign, "schema")])
def test_a_damaged_fragment_is_named(tmp_path, damage, message):
    path = results.fragment_path("s", HASH, tmp_path)
    damage(path)
    with pytest.raises(results.ResultsError) as error:
        results.read_fragment(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


@pytest.mark.parametrize("damage", [write_truncated, write_foreign])
def test_resume_reruns_a_run_whose_fragment_is_damaged(micro_zoo, tmp_path, monkeypatch, capsys, damage):
    config = compose(micro_run_overrides(tmp_path))
    spec = validate(config)
    path = results.fragment_path(spec.config.study, spec.config_hash, tmp_path)
    damage(path)
    fresh = make_rows(spec.config_hash, TASKS, study="t")
    monkeypatch.setattr(runner, "execute", lambda run_spec: fresh)
    rows = runner.run_one(config)
    assert f"run {spec.run_id}: {path}: " in capsys.readouterr().out
    pd.testing.assert_frame_equal(rows, fresh)
    pd.testing.assert_frame_equal(results.read_fragment(path), fresh)


@pytest.mark.parametrize("damage", [write_truncated, write_foreign])
def test_report_refuses_a_damaged_fragment_naming_it(tmp_path, capsys, damage):
    results.write_fragment(make_rows(HASH, TASKS, study="s"), results.fragment_path("s", HASH, tmp_path))
    damaged = results.fragment_path("s", "b" * 64, tmp_path)
    damage(damaged)
    assert report.main(["study=s", f"results_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mergelab report: error: {damaged}: ") and len(err.strip().splitlines()) == 1


def test_report_keeps_one_copy_of_a_run_found_in_two_fragments(tmp_path):
    rows = make_rows(HASH, TASKS, study="s")
    original = results.write_fragment(rows, results.fragment_path("s", HASH, tmp_path))
    copy = original.with_name("copy of run.parquet")
    shutil.copy(original, copy)
    with pytest.warns(MergeWarning, match=f"run {HASH[:12]} is in both {original} and {copy}"):
        loaded = results.load("s", tmp_path)
    assert len(loaded) == len(rows) == 2
    assert set(loaded["task"]) == set(TASKS)


@pytest.mark.parametrize("study", ["../../x", "", "a/b", "..", "."])
def test_report_refuses_a_study_that_is_not_a_plain_name(tmp_path, capsys, study):
    assert report.main([f"study={study}", f"results_dir={tmp_path}"]) == 2
    assert "is not allowed; use a plain name" in capsys.readouterr().err


def test_a_fragment_from_before_the_per_example_columns_is_still_a_fragment(tmp_path):
    """Older fragments lack only `LATER_COLUMNS`: they read back with those columns null."""
    rows = make_rows(HASH, TASKS)
    path = results.fragment_path("s", HASH, tmp_path)
    path.parent.mkdir(parents=True)
    older = results.to_table(rows).drop_columns(results.LATER_COLUMNS)
    pq.write_table(older, path)
    loaded = results.read_fragment(path)
    assert list(loaded.columns) == results.COLUMNS and loaded["chance"].isna().all()
