"""`mergelab run` on the micro zoo: rows, normalization, resume, selection, sweeps, kill-and-resume, W&B."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mergelab import zoo
from mergelab.experiment import results, runner
from mergelab.experiment.config import validate
from mergelab.experiment.sweep import compose

FAST = ["model=micro", "eval.max_examples=8", "logger=none", "progress=false", "device=cpu"]


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [*FAST, f"results_dir={tmp_path}", "study=t", *extra]


def scale_search(tmp_path: Path, grid: tuple[float, float], *extra: str):
    """A two-expert task-arithmetic run (held-in only) whose scale is searched on validation over `grid`."""
    return compose(
        overrides(
            tmp_path,
            "merge=task_arithmetic",
            "experts.n_experts=2",
            "eval.held_out=false",
            "select=validation",
            f"select_grid.task_arithmetic.scale=[{grid[0]},{grid[1]}]",
            *extra,
        )
    )


def independent_score(model_path, task: str, split: str = "test", model=None) -> float:
    """A task score computed without the runner: load, then the evaluator directly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergelab import eval as ml_eval

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = model or AutoModelForCausalLM.from_pretrained(model_path).eval()
    kind = zoo.load_suite().tasks[task].kind
    return ml_eval.evaluate_task(
        model, tokenizer, zoo.load_task(task, split), kind, max_examples=8, progress=False
    )


def test_full_run_rows_schema_and_normalization(micro_zoo, tmp_path):
    from mergelab.api.merging import load_merged_model

    config = compose(overrides(tmp_path, "merge=task_arithmetic", "experts.n_experts=2", "merge.scale=0.7"))
    spec = validate(config)
    rows = runner.run_one(config)
    suite = zoo.load_suite()
    held_in = [task for category in spec.categories for task in suite.tasks_in(category)]
    held_out = suite.group("held_out")
    assert list(rows.columns) == results.COLUMNS
    assert sorted(rows["task"]) == sorted(held_in + held_out)
    assert set(rows[rows["group"] == "held_in"]["task"]) == set(held_in)
    assert rows["run_id"].nunique() == 1 and rows["config_hash"].iloc[0] == spec.config_hash
    assert set(rows["n_experts"]) == {2} and set(rows["expert_set"]) == {",".join(spec.categories)}
    assert set(rows["scale"]) == {0.7} and json.loads(rows["hyperparameters"].iloc[0])["scale"] == 0.7
    assert (rows["parameters"] > 0).all() and (rows["merge_seconds"] > 0).all()
    for row in rows.itertuples():
        expected = row.value / row.reference if row.reference else math.nan
        assert row.normalized == pytest.approx(expected, nan_ok=True), row.task
        expected = row.value / row.multitask_reference if row.multitask_reference else math.nan
        assert row.normalized_multitask == pytest.approx(expected, nan_ok=True), row.task
        assert row.metric == ("accuracy" if suite.tasks[row.task].kind == "classification" else "exact_match")
        # per-example correctness on the same examples for the merged model and its references
        assert list(row.examples) == list(range(len(row.correct))) and len(row.correct) == 8
        assert np.mean(row.correct) == row.value and np.mean(row.reference_correct) == row.reference
        assert np.mean(row.multitask_correct) == row.multitask_reference
        assert row.chance == pytest.approx(suite.tasks[row.task].chance), row.task
        expected = (
            (row.value - row.chance) / (row.reference - row.chance)
            if row.reference != row.chance
            else math.nan
        )
        assert row.chance_corrected == pytest.approx(expected, nan_ok=True), row.task
    kind = spec.config.experts.base_kind
    category = spec.categories[0]
    first_task = suite.tasks_in(category)[0]
    row = rows.set_index("task").loc[first_task]
    assert row["reference"] == independent_score(
        zoo.model_path("micro", kind, "expert", category), first_task
    )
    row = rows.set_index("task").loc[held_out[0]]
    assert row["reference"] == independent_score(zoo.model_path("micro", kind, "base"), held_out[0])
    base = zoo.model_path("micro", kind, "base")
    experts = [zoo.model_path("micro", kind, "expert", c) for c in spec.categories]
    merged = load_merged_model(base, torch_merge(base, experts, 0.7))
    assert rows.set_index("task").loc[held_out[0]]["value"] == independent_score(
        base, held_out[0], model=merged
    )
    pd.testing.assert_frame_equal(results.load("t", tmp_path), rows)


def torch_merge(base, experts, scale: float) -> dict[str, torch.Tensor]:
    """Task arithmetic re-implemented on the checkpoints' tensors (sum of task vectors times scale)."""
    from safetensors.torch import load_file

    base_state = load_file(Path(base) / "model.safetensors")
    states = [load_file(Path(path) / "model.safetensors") for path in experts]
    return {
        name: tensor + scale * sum(state[name] - tensor for state in states)
        for name, tensor in base_state.items()
    }


def test_a_single_expert_average_reproduces_the_expert_and_saves_it(micro_zoo, tmp_path):
    from safetensors.torch import load_file

    config = compose(
        overrides(
            tmp_path,
            "merge=average",
            "experts.categories=[food]",
            "experts.n_experts=1",
            "eval.held_out=false",
            "save_merged=true",
        )
    )
    spec = validate(config)
    rows = runner.run_one(config)
    assert set(rows["task"]) == set(zoo.load_suite().tasks_in("food"))
    assert (rows["value"] == rows["reference"]).all()
    merged_dir = tmp_path / "t" / "merged" / spec.config_hash
    expert = load_file(zoo.model_path("micro", "base", "expert", "food") / "model.safetensors")
    merged = {}
    for file in merged_dir.glob("*.safetensors"):
        merged |= load_file(file)
    assert (merged_dir / "config.json").is_file() and merged.keys() == expert.keys()
    assert all(torch.equal(merged[name], expert[name]) for name in expert)


def test_resume_skips_a_finished_run_and_force_reruns_it(micro_zoo, tmp_path, monkeypatch):
    config = compose(overrides(tmp_path, "merge=ties", "experts.n_experts=2", "eval.held_out=false"))
    first = runner.run_one(config)

    def must_not_run(spec):
        raise AssertionError("a finished run was executed again")

    monkeypatch.setattr(runner, "execute", must_not_run)
    pd.testing.assert_frame_equal(runner.run_one(config), first)
    monkeypatch.setattr(runner, "execute", lambda spec: first.assign(value=first["value"] * 0))
    forced = runner.run_one(
        compose(overrides(tmp_path, "merge=ties", "experts.n_experts=2", "eval.held_out=false", "force=true"))
    )
    assert (forced["value"] == 0).all()
    assert (results.load("t", tmp_path)["value"] == 0).all() and len(results.load("t", tmp_path)) == len(
        first
    )


def test_select_validation_picks_the_best_scale_and_records_it(micro_zoo, tmp_path):
    from mergelab import eval as ml_eval
    from mergelab.api.merging import load_merged_model

    grid = [0.3, 1.0]
    config = scale_search(tmp_path, grid)
    spec = validate(config)
    rows = runner.run_one(config)
    suite = zoo.load_suite()
    base = zoo.model_path("micro", "base", "base")
    experts = {c: zoo.model_path("micro", "base", "expert", c) for c in spec.categories}
    tasks = [task for c in spec.categories for task in suite.tasks_in(c)]
    references = {
        task: independent_score(experts[suite.tasks[task].category], task, "validation") for task in tasks
    }
    category_of = {task: suite.tasks[task].category for task in tasks}
    validation = {}
    for scale in grid:
        merged = load_merged_model(base, torch_merge(base, list(experts.values()), scale))
        normalized = {
            task: independent_score(base, task, "validation", model=merged) / references[task]
            for task in tasks
            if references[task]
        }
        validation[scale] = ml_eval.aggregate(normalized, category_of) if normalized else -math.inf
    best = max(grid, key=lambda scale: (validation[scale], -grid.index(scale)))
    assert set(rows["selection"]) == {"validation"} and set(rows["split"]) == {"test"}
    assert set(rows["scale"]) == {best}
    assert json.loads(rows["hyperparameters"].iloc[0])["scale"] == best


def test_run_study_runs_the_sweep_in_process_then_resumes(micro_zoo, tmp_path, monkeypatch):
    rows = runner.run_study("micro_smoke", [f"results_dir={tmp_path}", "progress=false", "device=cpu"])
    summary = rows.groupby("config_hash")[["method", "n_experts"]].first()
    assert sorted(map(tuple, summary.values.tolist())) == [
        ("average", 2),
        ("average", 3),
        ("task_arithmetic", 2),
        ("task_arithmetic", 3),
    ]
    monkeypatch.setattr(runner, "execute", lambda spec: pytest.fail("resumed study re-ran a run"))
    again = runner.run_study("micro_smoke", [f"results_dir={tmp_path}", "progress=false", "device=cpu"])
    assert sorted(again["config_hash"]) == sorted(rows["config_hash"])


def sweep_command(results_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mergelab.cli",
        "run",
        "-m",
        "experiment=micro_smoke",
        "progress=false",
        "device=cpu",
        f"results_dir={results_dir}",
        "hydra.launcher.n_jobs=1",
    ]


@pytest.mark.slow
def test_a_killed_joblib_sweep_resumes_with_every_row_once(micro_zoo, tmp_path):
    env = {**os.environ, "MERGELAB_HOME": str(micro_zoo), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    fragments = tmp_path / "micro_smoke" / "fragments"
    process = subprocess.Popen(
        sweep_command(tmp_path),
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while (
        not list(fragments.glob("[!.]*.parquet")) and time.monotonic() < deadline and process.poll() is None
    ):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = {path.name for path in fragments.glob("[!.]*.parquet")}
    assert 1 <= len(done_before) < 4
    finished = subprocess.run(sweep_command(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "4/4 runs have results" in finished.stdout
    table = results.load("micro_smoke", tmp_path)
    per_run = table.groupby("config_hash").size()
    assert len(per_run) == 4 and per_run.nunique() <= 2
    assert not table.duplicated(["config_hash", "task", "metric"]).any()
    planned = {
        validate(config).config_hash
        for _, config in runner.plan(["experiment=micro_smoke", f"results_dir={tmp_path}"], multirun=True)
    }
    assert set(per_run.index) == planned


def test_wandb_offline_run_is_written_to_the_logger_dir(micro_zoo, tmp_path, monkeypatch):
    from mergelab.experiment.logging_wandb import log_run
    from tests.test_results import TASKS, make_rows

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = compose(overrides(tmp_path, "logger=wandb", f"logger.dir={tmp_path / 'wandb'}"))
    spec = validate(config)
    run_dir = log_run(spec.config, spec, make_rows(spec.config_hash, TASKS))
    assert run_dir is not None and run_dir.name.startswith("offline-run-")
    assert list(run_dir.glob("*.wandb")) and str(run_dir).startswith(str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert log_run(spec.config, spec, make_rows(spec.config_hash, TASKS)) is None


def test_hub_preset_runs_through_the_same_path_on_local_checkpoints(micro_zoo, tmp_path):
    """A hub preset with `model.path` and expert paths on disk: same loading, merge and rows as the zoo."""
    local = {c: zoo.model_path("micro", "it", "expert", c) for c in ("color", "size")}
    config = compose(
        overrides(
            tmp_path,
            "model=pythia-410m",
            f"model.path={zoo.model_path('micro', 'it', 'base')}",
            "experts=paths",
            *(f"+experts.paths.{category}={path}" for category, path in local.items()),
            "merge=ties",
        )
    )
    rows = runner.run_one(config)
    zoo_rows = runner.run_one(
        compose(
            overrides(
                tmp_path,
                "merge=ties",
                "experts.base_kind=it",
                "experts.categories=[color,size]",
                "experts.n_experts=2",
            )
        )
    )
    assert set(rows["model"]) == {"pythia-410m"} and rows["multitask_reference"].isna().all()
    columns = ["task", "value", "reference", "normalized"]
    pd.testing.assert_frame_equal(rows[columns], zoo_rows[columns])


def test_cached_references_are_keyed_by_the_suite_version(micro_zoo, tmp_path, monkeypatch):
    """A reference score is reused for the same model, task and suite, and recomputed once the suite is
    rebuilt at another version (which may give a task other examples under the same name)."""
    from mergelab.experiment.config import EvalConfig
    from mergelab.experiment.scoring import ReferenceCache
    from mergelab.zoo import suite

    settings = EvalConfig(True, True, "test", 8, 8, False, False, "zoo", None)
    cache = ReferenceCache(tmp_path, settings, torch.device("cpu"), progress=False)
    base = zoo.model_path("micro", "base", "base")
    first = cache.outcomes(base, {"nli_color": "classification"}, "test")["nli_color"]
    assert len(list((tmp_path / "_references").rglob("nli_color.json"))) == 1
    assert cache.outcomes(base, {"nli_color": "classification"}, "test")["nli_color"] == first
    assert len(list((tmp_path / "_references").rglob("nli_color.json"))) == 1
    monkeypatch.setattr(suite, "SUITE_VERSION", suite.SUITE_VERSION + 1)
    cache.outcomes(base, {"nli_color": "classification"}, "test")
    assert len(list((tmp_path / "_references").rglob("nli_color.json"))) == 2


def test_a_finished_run_and_its_search_are_done_again_once_their_models_are_rebuilt(
    micro_zoo, tmp_path, monkeypatch
):
    """Rows and validation selections record the digest of the models they came from: a zoo rebuilt since
    (another digest) runs them again, the same models skip them, and a record without a digest is kept."""
    config = scale_search(tmp_path, (0.5, 1.0), "select_subset_seed=0")
    first = runner.run_one(config)
    spec = validate(config)
    assert set(first["models_digest"]) == {runner.models_digest(runner.locate_models(spec))}
    assert set(first["suite_version"]) == {zoo.suite.SUITE_VERSION}
    selection = next((tmp_path / "t" / "selections").glob("*.json"))
    record = json.loads(selection.read_text())
    assert record["models_digest"] == first["models_digest"].iloc[0]
    assert record["suite_version"] == zoo.suite.SUITE_VERSION

    executed = []
    monkeypatch.setattr(runner, "execute", lambda spec: executed.append(spec) or first)
    runner.run_one(config)
    assert executed == []
    monkeypatch.setattr(runner, "current_models_digest", lambda spec: "0" * 16)
    runner.run_one(config)
    assert len(executed) == 1
    fragment = results.fragment_path("t", spec.config_hash, str(tmp_path))
    results.write_fragment(first.assign(models_digest=None), fragment)
    runner.run_one(config)
    assert len(executed) == 1

    monkeypatch.undo()
    searches = []
    monkeypatch.setattr(runner, "select_on_validation", lambda *args: searches.append(args) or {"scale": 1.0})
    chosen = runner.chosen_hyperparameters(spec, None, None, torch.device("cpu"))
    assert searches == [] and chosen == json.loads(selection.read_text())["hyperparameters"]
    monkeypatch.setattr(runner, "current_models_digest", lambda spec: "0" * 16)
    assert runner.chosen_hyperparameters(spec, None, None, torch.device("cpu")) == {"scale": 1.0}
    assert len(searches) == 1


def test_a_run_and_its_search_are_done_again_once_their_suite_changes(micro_zoo, tmp_path, monkeypatch):
    """A suite rebuilt at another version may give a task other examples under the same name: its finished
    runs and searches are done again (the models unchanged), and a record without a version is kept."""
    config = scale_search(tmp_path, (0.5, 1.0), "select_subset_seed=0")
    first = runner.run_one(config)
    spec = validate(config)
    executed, searches = [], []
    monkeypatch.setattr(runner, "execute", lambda spec: executed.append(spec) or first)
    monkeypatch.setattr(runner, "select_on_validation", lambda *args: searches.append(args) or {"scale": 1.0})
    monkeypatch.setattr(runner.suites, "suite_version", lambda suite: zoo.suite.SUITE_VERSION + 1)
    assert runner.outdated(first.iloc[0], spec) == (
        f"its zoo suite is at version {zoo.suite.SUITE_VERSION + 1} (was {zoo.suite.SUITE_VERSION})"
    )
    runner.run_one(config)
    runner.chosen_hyperparameters(spec, None, None, torch.device("cpu"))
    assert len(executed) == 1 and len(searches) == 1
    results.write_fragment(
        first.assign(suite_version=None), results.fragment_path("t", spec.config_hash, str(tmp_path))
    )
    runner.run_one(config)
    assert len(executed) == 1


def test_a_finished_sweep_is_launched_again_when_a_run_of_it_is_outdated(
    micro_zoo, tmp_path, monkeypatch, capsys
):
    """`mergelab run` does not relaunch a sweep whose every run has a fragment, unless one of them is
    outdated (its models rebuilt or its suite at another version): resuming after a zoo rebuild redoes it."""
    argv = overrides(tmp_path, "experts.n_experts=2")
    assert runner.main(argv) == 0
    launched = []
    monkeypatch.setattr(runner, "_launch", lambda args: launched.append(args) or 0)
    assert runner.main(argv) == 0 and launched == []
    monkeypatch.setattr(runner, "current_models_digest", lambda spec: "0" * 16)
    assert runner.main(argv) == 0 and launched == [argv]
    assert "its models were rebuilt; run " in capsys.readouterr().err
