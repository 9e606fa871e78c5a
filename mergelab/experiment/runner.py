"""`mergelab run`: compose -> load base and experts -> merge on the device -> evaluate -> record.

One run merges the chosen experts into the base with the engine (on `device: auto`, no checkpoint written
unless `save_merged=true`), loads the merged weights into a model built from the base's config, evaluates
the held-in tasks (those of the merged experts' categories) and the held-out tasks, normalizes each score
by its reference (held-in: the category's expert; held-out: the base zero-shot; second view: the
multitask baseline) and writes one parquet fragment per run. `select=validation` first searches the
method's grid (`select_grid`) on the validation splits and evaluates the best point on `eval.split`.
With `select_subset_seed` (and `select_replicate`) the search merges the subset of that seed (and the
experts of that replicate) instead, once, and every subset seed (and replicate) of the same configuration
reuses its cached choice.

`mergelab run -m ...` sweeps with Hydra's launchers (joblib by default); `run_study` runs a study's sweep
in this process, one run after another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mergelab import zoo
from mergelab.api.override_hint import quote_hint
from mergelab.engine.checkpoint import CheckpointError
from mergelab.engine.device import resolve_device
from mergelab.engine.models import load_model, load_tokenizer
from mergelab.eval import suites
from mergelab.eval.tasks import TaskOutcome
from mergelab.experiment import results, run_checks, watchdog
from mergelab.experiment.config import (
    ConfigError,
    RunSpec,
    choose_categories,
    config_hash,
    selection_points,
    validate,
)
from mergelab.experiment.intervals import chance_corrected
from mergelab.experiment.model_checks import refuse_nonfinite_model, refuse_nonfinite_scores
from mergelab.experiment.scoring import (
    METRIC_OF_KIND,
    ReferenceCache,
    models_fingerprint,
    score_tasks,
    task_outcomes,
)
from mergelab.experiment.sweep import CONF_DIR, CONFIG_NAME, launches_here, plan
from mergelab.methods import MergeConfigError


@dataclasses.dataclass(frozen=True)
class RunModels:
    """Where a run's base, experts (by category) and multitask baseline live."""

    base: str
    experts: dict[str, str]
    multitask: str | None


def locate_models(spec: RunSpec) -> RunModels:
    """Paths of the run's models; a zoo size that is not built is an error naming the build command."""
    config = spec.config
    if config.model.source == "hub":
        paths = config.experts.paths or {}
        return RunModels(config.model.path, {c: paths[c] for c in spec.categories}, config.experts.multitask)
    size, kind = config.model.size, config.experts.base_kind
    # experts.init=different: the i-th merged expert (category order) comes from zoo init i % 2
    inits = [index % 2 if config.experts.init == "different" else 0 for index in range(len(spec.categories))]
    replicate = config.experts.replicate
    models = RunModels(
        str(zoo.model_path(size, kind, "base")),
        {
            c: str(zoo.model_path(size, kind, "expert", c, init=i, replicate=replicate))
            for c, i in zip(spec.categories, inits)
        },
        str(zoo.model_path(size, kind, "multitask")),
    )
    for path in [models.base, *models.experts.values(), models.multitask]:
        if not (Path(path) / "config.json").is_file():
            option = " init=1" if "/init1/" in Path(path).as_posix() else ""
            option += f" replicate={replicate}" if f"/experts_r{replicate}/" in Path(path).as_posix() else ""
            raise ConfigError(
                f"model.size: zoo size '{size}' is not built ({path}); "
                f"run `mergelab zoo build size={size}{option}`"
            )
    return models


def models_digest(models: RunModels) -> str:
    """Identity of a run's base, experts and multitask baseline (their zoo manifest digests, else their
    paths): a finished run or a validation search whose models were rebuilt since is done again."""
    parts = [models.base, *(models.experts[c] for c in sorted(models.experts))]
    return models_fingerprint(parts + ([models.multitask] if models.multitask else []))


def current_models_digest(spec: RunSpec) -> str | None:
    """`models_digest` of the run's models as they are now, or None where they are not available here."""
    try:
        return models_digest(locate_models(spec))
    except ConfigError:
        return None


def task_plan(spec: RunSpec) -> dict[str, tuple[str, str, str]]:
    """Evaluated tasks of the `eval.suite` suite: name -> (kind, category, group held_in | held_out), in
    suite order."""
    suite = suites.load_suite(spec.config.eval.suite)
    tasks = {}
    for name, task in suite.tasks.items():
        held_in = task.group == "held_in" and task.category in spec.categories and spec.config.eval.held_in
        held_out = task.group == "held_out" and spec.config.eval.held_out
        if held_in or held_out:
            tasks[name] = (task.kind, task.category, task.group)
    return tasks


def reference_outcomes(
    spec: RunSpec,
    models: RunModels,
    tasks: dict[str, tuple[str, str, str]],
    split: str,
    cache: ReferenceCache,
) -> tuple[dict[str, TaskOutcome], dict[str, TaskOutcome | None]]:
    """Per task: the primary reference's outcome (expert or base zero-shot) and the multitask baseline's
    (None if there is none)."""
    primary: dict[str, TaskOutcome] = {}
    for category, path in models.experts.items():
        own = {
            name: kind for name, (kind, cat, group) in tasks.items() if group == "held_in" and cat == category
        }
        primary |= cache.outcomes(path, own, split) if own else {}
    held_out = {name: kind for name, (kind, _, group) in tasks.items() if group == "held_out"}
    primary |= cache.outcomes(models.base, held_out, split) if held_out else {}
    multitask: dict[str, TaskOutcome | None] = dict.fromkeys(tasks)
    if models.multitask and spec.config.eval.multitask_reference:
        multitask = cache.outcomes(
            models.multitask, {name: kind for name, (kind, _, _) in tasks.items()}, split
        )
    return primary, multitask


def training_data(spec: RunSpec) -> list[str] | None:
    """For methods that run the experts on data (statistics, PLeaS): each expert's own data, `zoo:<category>`."""
    from mergelab.methods import METHODS

    method = METHODS[spec.method]
    if method.statistic is None and not getattr(method, "whole_model", False):
        return None
    return [f"zoo:{category}" for category in spec.categories]


def merge_and_load(
    spec: RunSpec, models: RunModels, hparams: dict[str, Any], device: torch.device, out: Path | None
):
    """The merged model on `device`, and the engine's report (merge seconds, peak memory)."""
    from mergelab.api.merging import load_merged_model, merge_with_report

    experts = [models.experts[c] for c in spec.categories]
    data = training_data(spec)
    if out is not None:
        _, report = merge_with_report(
            models.base,
            experts,
            spec.method,
            out,
            device=str(device),
            overwrite=True,
            progress=False,
            data=data,
            statistics_progress=spec.config.progress,
            allow_nonfinite=spec.config.allow_nonfinite,
            **hparams,
        )
        return load_model(out, device), report
    state_dict, report = merge_with_report(
        models.base,
        experts,
        spec.method,
        device=str(device),
        progress=False,
        data=data,
        statistics_progress=spec.config.progress,
        allow_nonfinite=spec.config.allow_nonfinite,
        **hparams,
    )
    state_dict = {name: tensor.cpu() for name, tensor in state_dict.items()}
    return load_merged_model(models.base, state_dict).to(device), report


def normalized_mean(
    scores: dict[str, float], references: dict[str, float], category_of: dict[str, str]
) -> float:
    """Mean normalized score within category, then across; tasks with a zero reference are left out."""
    from mergelab import eval as ml_eval

    normalized = ml_eval.normalized_scores(scores, references)
    defined = {task: value for task, value in normalized.items() if not math.isnan(value)}
    return ml_eval.aggregate(defined, category_of) if defined else -math.inf


def select_on_validation(spec, models, tasks, tokenizer, cache, device) -> dict[str, Any]:
    """The grid point with the best mean normalized held-in validation score (first one on ties)."""
    points = selection_points(spec.config, spec.method, spec.hparams)
    if len(points) <= 1:
        return points[0] if points else dict(spec.hparams)
    held_in = {name: entry for name, entry in tasks.items() if entry[2] == "held_in"}
    kinds = {name: kind for name, (kind, _, _) in held_in.items()}
    outcomes, _ = reference_outcomes(spec, models, held_in, "validation", cache)
    references = {name: outcome.score for name, outcome in outcomes.items()}
    category_of = {name: category for name, (_, category, _) in held_in.items()}
    best, best_score = points[0], -math.inf
    for point in points:
        model, _ = merge_and_load(spec, models, point, device, None)
        scores = score_tasks(model, tokenizer, kinds, "validation", spec.config.eval)
        score = normalized_mean(scores, references, category_of)
        print(
            f"  select {json.dumps({k: point[k] for k in spec.config.select_grid[spec.method]})}: {score:.4f}"
        )
        if score > best_score:
            best, best_score = point, score
    return best


def selection_run(spec: RunSpec) -> RunSpec:
    """The run whose experts the validation search merges: `spec` itself, or, with `select_subset_seed`
    and/or `select_replicate`, the same run with the expert subset drawn by that seed and the experts of
    that replicate (so every subset seed and replicate shares one search)."""
    seed = spec.config.select_subset_seed
    replicate = spec.config.select_replicate
    experts = spec.config.experts
    wanted = dataclasses.replace(
        experts,
        subset_seed=experts.subset_seed if seed is None else seed,
        replicate=experts.replicate if replicate is None else replicate,
    )
    if wanted == experts:
        return spec
    config = dataclasses.replace(spec.config, experts=wanted)
    categories = choose_categories(config)
    return RunSpec(config, spec.method, spec.hparams, categories, config_hash(config, categories))


def chosen_hyperparameters(spec: RunSpec, tokenizer, cache: ReferenceCache, device) -> dict[str, Any]:
    """The validation search's choice; with `select_subset_seed` or `select_replicate` it is cached in
    `<results_dir>/<study>/selections/<hash of the searched run>.json` and reused by the runs sharing it."""
    search = selection_run(spec)
    if spec.config.select_subset_seed is None and spec.config.select_replicate is None:
        return select_on_validation(
            search, locate_models(search), task_plan(search), tokenizer, cache, device
        )
    path = Path(spec.config.results_dir) / spec.config.study / "selections" / f"{search.config_hash}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.with_name(f".{path.name}.lock")):  # parallel workers wait for one shared search
        if path.is_file() and not spec.config.force:
            record = json.loads(path.read_text())
            if outdated(record, search) is None:
                return record["hyperparameters"]
        models = locate_models(search)
        chosen = select_on_validation(search, models, task_plan(search), tokenizer, cache, device)
        record = {
            "models_digest": models_digest(models),
            "suite_version": suites.suite_version(search.config.eval.suite),
            "hyperparameters": chosen,
            "experts": search.categories,
            "subset_seed": search.config.experts.subset_seed,
            "replicate": search.config.experts.replicate,
        }
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(record, sort_keys=True))
        os.replace(temporary, path)
    return chosen


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive advisory lock on `lock_path` (released when the holder exits, even if killed)."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def peak_memory_bytes(device: torch.device, merge_peak: int) -> int:
    if device.type == "cuda":
        return max(int(torch.cuda.max_memory_allocated(device)), merge_peak)
    from mergelab.engine.device import peak_rss_bytes

    return peak_rss_bytes()


def build_rows(spec, tasks, outcomes, primary, multitask, hparams, facts) -> pd.DataFrame:
    """One tidy row per evaluated task (its metric follows the task kind), with the per-example
    correctness of the merged model and of its references on the same examples."""
    config = spec.config
    rows = []
    for name, (kind, category, group) in tasks.items():
        outcome, reference_outcome, baseline_outcome = outcomes[name], primary[name], multitask[name]
        value, reference, chance = outcome.score, reference_outcome.score, outcome.chance
        baseline = baseline_outcome.score if baseline_outcome is not None else math.nan
        for other in (reference_outcome, baseline_outcome):
            if other is not None and other.examples != outcome.examples:
                raise RuntimeError(
                    f"task {name}: a reference was scored on other examples than the merged model"
                )
        rows.append(
            {
                **facts,
                "hyperparameters": json.dumps(hparams, sort_keys=True),
                "scale": float(hparams.get("scale") if hparams.get("scale") is not None else math.nan),
                "density": float(hparams.get("density") if hparams.get("density") is not None else math.nan),
                "task": name,
                "category": category,
                "group": group,
                "split": config.eval.split,
                "metric": METRIC_OF_KIND[kind],
                "value": value,
                "reference": reference,
                "normalized": value / reference if reference else math.nan,
                "multitask_reference": baseline,
                "normalized_multitask": value / baseline if baseline else math.nan,
                "chance": chance,
                "chance_corrected": chance_corrected(value, reference, chance),
                "examples": outcome.examples,
                "correct": outcome.correct,
                "reference_correct": reference_outcome.correct,
                "multitask_correct": baseline_outcome.correct if baseline_outcome is not None else None,
                "clusters": outcome.clusters,
            }
        )
    return pd.DataFrame(rows, columns=results.COLUMNS)


def execute(spec: RunSpec) -> pd.DataFrame:
    """Merge, evaluate and record one validated run (no resume check)."""
    config = spec.config
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    models = locate_models(spec)
    tasks = task_plan(spec)
    tokenizer = load_tokenizer(models.base)
    cache = ReferenceCache(config.results_dir, config.eval, device, config.progress)
    print(
        f"run {spec.run_id}: {config.model.name}/{config.experts.base_kind} {spec.method} "
        f"x{len(spec.categories)} [{','.join(spec.categories)}] on {device}"
    )
    hparams = dict(spec.hparams)
    if config.select == "validation":
        hparams = chosen_hyperparameters(spec, tokenizer, cache, device)
    out = (
        Path(config.results_dir) / config.study / "merged" / spec.config_hash if config.save_merged else None
    )
    model, report = merge_and_load(spec, models, hparams, device, out)
    refuse_nonfinite_model(spec, model)
    started = time.perf_counter()
    kinds = {name: kind for name, (kind, _, _) in tasks.items()}
    outcomes = task_outcomes(
        model, tokenizer, kinds, config.eval.split, config.eval, progress=config.progress, desc="merged"
    )
    refuse_nonfinite_scores(spec, {name: outcome.score for name, outcome in outcomes.items()})
    eval_seconds = time.perf_counter() - started
    primary, multitask = reference_outcomes(spec, models, tasks, config.eval.split, cache)
    facts = {
        "run_id": spec.run_id,
        "study": config.study,
        "model": config.model.name,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "base_kind": config.experts.base_kind,
        "method": spec.method,
        "selection": config.select,
        "expert_set": ",".join(spec.categories),
        "n_experts": len(spec.categories),
        "subset_seed": config.experts.subset_seed,
        "replicate": config.experts.replicate,
        "merge_seconds": report.seconds,
        "eval_seconds": eval_seconds,
        "peak_memory_bytes": peak_memory_bytes(device, report.peak_device_bytes),
        "device": str(device),
        "config_hash": spec.config_hash,
        "models_digest": models_digest(models),
        "suite_version": suites.suite_version(config.eval.suite),
        "git_commit": results.git_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return build_rows(spec, tasks, outcomes, primary, multitask, hparams, facts)


def run_one(cfg: Any) -> pd.DataFrame:
    """Run one composed config (DictConfig or mapping) unless its fragment exists; returns its rows."""
    from mergelab.experiment.logging_wandb import log_run
    from mergelab.experiment.report import print_summary

    spec = validate(cfg)
    config = spec.config
    path = results.fragment_path(config.study, spec.config_hash, config.results_dir)
    if path.is_file() and not config.force:
        try:
            rows = results.read_fragment(path)
        except results.ResultsError as error:
            print(f"run {spec.run_id}: {error}; running it again")
        else:
            reason = outdated(rows.iloc[0], spec)
            if reason is None:
                print(f"run {spec.run_id}: done before, skipped ({path})")
                return rows
            print(f"run {spec.run_id}: {reason} since {path} was written; running it again")
    rows = execute(spec)
    results.write_fragment(rows, path)
    log_run(config, spec, rows)
    print_summary(rows)
    return rows


def outdated(record: Mapping[str, Any], spec: RunSpec) -> str | None:
    """Why a result or selection `record` (a row, or a selection file's fields) no longer holds for the run:
    its models were rebuilt since (another `models_digest`) or its suite's task data changed (another
    `suite_version`); None when it holds. A field missing from the record (written before it was kept) is
    taken as it is."""
    recorded_digest = record.get("models_digest")
    if isinstance(recorded_digest, str):
        current = current_models_digest(spec)
        if current is not None and current != recorded_digest:
            return "its models were rebuilt"
    recorded_version = record.get("suite_version")
    if recorded_version is not None and pd.notna(recorded_version):
        current_version = suites.suite_version(spec.config.eval.suite)
        if int(recorded_version) != current_version:
            return f"its {spec.config.eval.suite} suite is at version {current_version} (was {int(recorded_version)})"
    return None


def run_study(experiment: str, overrides: list[str] | None = None) -> pd.DataFrame:
    """Every run of the study `experiment` (its sweep crossed with `overrides`), in this process."""
    runs = plan([f"experiment={experiment}", *(overrides or [])], multirun=True)
    frames = [run_one(cfg) for _, cfg in runs]
    print(f"study {experiment}: {len(frames)} runs")
    return pd.concat(frames, ignore_index=True) if frames else results.empty_frame()


def _hydra_job(cfg) -> None:
    """One job of a launcher: a run whose input mergelab refuses prints one line and records nothing (the
    sweep's summary then counts it as missing); a worker stops when the sweep's process dies."""
    watchdog.stop_with_parent()
    try:
        run_one(cfg)
    except (ConfigError, CheckpointError, MergeConfigError) as error:
        print(f"mergelab run: error: {' '.join(str(error).split())}", file=sys.stderr)


def _launch(args: list[str]) -> int:
    """Hand the command line to `@hydra.main` (launchers, -m, --cfg ...); its exit code."""
    import hydra

    entry = hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base="1.3")(_hydra_job)
    previous = sys.argv
    sys.argv = ["mergelab run", *args]
    try:
        entry()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = previous
    return 0


def main(argv: list[str]) -> int:
    """`mergelab run [-m] [overrides]`: validate every planned run, launch them, print the summary."""
    from mergelab.experiment.report import print_summary

    flags = [arg for arg in argv if arg.startswith("-")]
    if any(flag not in ("-m", "--multirun") for flag in flags):
        return _launch(argv)  # --help, --cfg, --info ...: Hydra's own behaviour
    overrides = [arg for arg in argv if not arg.startswith("-")]
    try:
        specs = [validate(cfg) for _, cfg in plan(overrides, multirun=bool(flags))]
        jobs_run_here = launches_here(overrides)
        for spec in specs:
            locate_models(spec)
            if jobs_run_here:
                run_checks.check_device_available(spec.config.device)
    except ConfigError as error:
        print(f"mergelab run: error: {quote_hint(str(error), argv)}", file=sys.stderr)
        return 2

    def done(spec: RunSpec) -> bool:
        path = results.fragment_path(spec.config.study, spec.config_hash, spec.config.results_dir)
        if not path.is_file():
            return False
        try:
            problem = outdated(results.read_fragment(path).iloc[0], spec)
        except results.ResultsError as error:
            problem = str(error)
        if problem is not None:
            print(f"mergelab run: warning: {problem}; run {spec.run_id} runs again", file=sys.stderr)
        return problem is None

    pending = [spec for spec in specs if spec.config.force or not done(spec)]
    with watchdog.sweep_process_exported():
        code = _launch(argv) if pending else 0  # a finished sweep is not relaunched (resume is instant)
    frames = []
    for spec in specs:
        path = results.fragment_path(spec.config.study, spec.config_hash, spec.config.results_dir)
        if path.is_file():
            with contextlib.suppress(results.ResultsError):  # named above; its run failed again
                frames.append(results.read_fragment(path))
    if len(specs) > 1 and frames:
        print_summary(pd.concat(frames, ignore_index=True))
    done = len(frames)
    print(
        f"mergelab run: {done}/{len(specs)} runs have results in {results.fragment_dir(specs[0].config.study, specs[0].config.results_dir)}"
    )
    return code or (0 if done == len(specs) else 1)
