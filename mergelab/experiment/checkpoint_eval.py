"""`mergelab eval model=DIR tasks=[...]`: score any local checkpoint, merged or not, and record tidy rows.

Task names are those of the evaluation suite (`eval.suite`: the zoo's or T0's; scored by mergelab's own
evaluators through `experiment.scoring.score_tasks`, exactly as `mergelab run` scores a merged model) and,
with the `lm_eval` extra, `lm_eval:<task>` for lm-evaluation-harness tasks (`experiment.lm_eval_tasks`).
The rows have the results schema of `mergelab run` (`experiment.results`): one per task and metric, in a
parquet fragment named by a hash of the model and the evaluation, written atomically and skipped when it
exists (`force=true` evaluates again). A model directory written by mergelab (`mergelab.json`) gets its
method, hyperparameters and experts in the rows; references and normalized scores are NaN (no reference
model is evaluated here), the per-example correctness of suite tasks is kept (`examples`, `correct`) for
interval estimates.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mergelab.experiment import results
from mergelab.experiment.config import ConfigError, EvalConfig, build_dataclass
from mergelab.experiment.lm_eval_tasks import PREFIX

JOB_KEYS = (
    "model",
    "tasks",
    "name",
    "device",
    "study",
    "results_dir",
    "force",
    "progress",
    "include_path",
    "num_fewshot",
)
REQUIRED_KEYS = ("model", "tasks")


@dataclass(frozen=True)
class EvalJob:
    """One checkpoint evaluation, checked: which model, which tasks of which kind, where the rows go."""

    model: str
    suite_tasks: tuple[str, ...]
    harness_tasks: tuple[str, ...]
    eval: EvalConfig
    name: str
    device: str
    study: str
    results_dir: str
    force: bool
    progress: bool
    include_path: str | None
    num_fewshot: int | None

    def config_hash(self) -> str:
        """SHA-256 of what determines the numbers: the model's weights, the tasks and the settings."""
        from mergelab.experiment.scoring import model_fingerprint

        identity = {
            "model": model_fingerprint(self.model),
            "files": _weight_files_identity(self.model),
            "suite_tasks": self.suite_tasks,
            "harness_tasks": self.harness_tasks,
            "eval": asdict(self.eval),
            "include_path": self.include_path,
            "num_fewshot": self.num_fewshot,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _weight_files_identity(model: str) -> list[tuple[str, int, int]]:
    """(name, size, modification time) of a model directory's weights and config: a checkpoint merged again
    into the same directory is a different model, not a finished evaluation."""
    directory = Path(model)
    if not directory.is_dir():
        return []
    files = [*directory.glob("*.safetensors"), *directory.glob("*.bin"), *directory.glob("*.json")]
    return sorted(
        (path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files if path.is_file()
    )


def help_text() -> str:
    return "\n".join(
        [
            "usage: mergelab eval model=DIR 'tasks=[TASK,...]' [eval=both|t0] [eval.OPTION=VALUE ...]",
            "                     [name=NAME] [device=auto|cpu|cuda] [study=eval] [results_dir=results]",
            "                     [force=true] [include_path=DIR] [num_fewshot=N]",
            "",
            "Scores one checkpoint (a model directory or hub id, merged or not) and writes one row per task and",
            "metric, with the columns of `mergelab run`, to <results_dir>/<study>/fragments/<hash>.parquet.",
            "TASK is a task of eval.suite (the zoo's by default, eval=t0 for the T0 mixture), scored by",
            "mergelab's evaluators (rank classification, greedy exact match), or lm_eval:NAME for an",
            "lm-evaluation-harness task (pip install 'mergelab[lm_eval]'; include_path=DIR adds custom task",
            "YAML files, e.g. with local data: dataset_path: json, dataset_kwargs.data_files). eval.split,",
            "eval.max_examples (also the harness's limit) and eval.batch_size apply to both.",
            "",
            "example: mergelab eval model=/m/merged 'tasks=[color_0,lm_eval:arc_easy]' eval.max_examples=200",
        ]
    )


def compose_job(overrides: list[str]) -> EvalJob:
    """The checked job from Hydra overrides (conf/eval_job.yaml and the `eval` group)."""
    from omegaconf import OmegaConf

    from mergelab.api.cli import compose_job_file, split_overrides
    from mergelab.eval import suites

    eval_overrides, job_values = split_overrides(overrides, group="eval", job_keys=JOB_KEYS)
    config, missing = compose_job_file("eval_job", eval_overrides, job_values, REQUIRED_KEYS)
    if missing:
        raise ConfigError(f"missing required option(s): {', '.join(missing)} (see `mergelab eval --help`)")
    plain: dict[str, Any] = OmegaConf.to_container(config, resolve=True)
    settings = build_dataclass(EvalConfig, plain["eval"], "eval.")
    tasks = plain["tasks"]
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(
            f"tasks must be a non-empty list, e.g. 'tasks=[color_0,lm_eval:arc_easy]', not {tasks!r}"
        )
    tasks = [str(task) for task in tasks]
    harness = tuple(task.removeprefix(PREFIX) for task in tasks if task.startswith(PREFIX))
    suite_tasks = tuple(task for task in tasks if not task.startswith(PREFIX))
    if suite_tasks:
        known = suites.load_suite(settings.suite).tasks
        unknown = [task for task in suite_tasks if task not in known]
        if unknown:
            raise ConfigError(
                f"tasks: {', '.join(unknown)} not in the {settings.suite} suite; its tasks: {', '.join(known)} "
                f"(lm-evaluation-harness tasks are written {PREFIX}NAME)"
            )
    for key in ("force", "progress"):
        if not isinstance(plain[key], bool):
            raise ConfigError(f"{key} must be true or false, not {plain[key]!r}")
    if plain["num_fewshot"] is not None and not isinstance(plain["num_fewshot"], int):
        raise ConfigError(f"num_fewshot must be an integer, not {plain['num_fewshot']!r}")
    model = str(plain["model"])
    return EvalJob(
        model=model,
        suite_tasks=suite_tasks,
        harness_tasks=harness,
        eval=settings,
        name=str(plain["name"] or Path(model).name),
        device=str(plain["device"]),
        study=str(plain["study"]),
        results_dir=str(plain["results_dir"]),
        force=plain["force"],
        progress=plain["progress"],
        include_path=None if plain["include_path"] is None else str(plain["include_path"]),
        num_fewshot=plain["num_fewshot"],
    )


def merge_provenance(model: str | Path) -> dict[str, Any]:
    """Method, hyperparameters and experts from the `mergelab.json` of a directory mergelab merged into
    (empty when there is none)."""
    try:
        record = json.loads((Path(model) / "mergelab.json").read_text())["merge"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return {}
    experts = [str(expert) for expert in record.get("experts", [])]
    return {
        "method": str(record.get("method", "")),
        "hparams": dict(record.get("hparams") or {}),
        "expert_set": ",".join(Path(expert).name for expert in experts),
        "n_experts": len(experts),
    }


def evaluate_checkpoint(job: EvalJob) -> pd.DataFrame:
    """Load the job's model once, score every task, and return the rows (results schema)."""
    from mergelab.engine.device import resolve_device
    from mergelab.engine.models import load_model, load_tokenizer
    from mergelab.eval import suites
    from mergelab.experiment.lm_eval_tasks import harness_scores
    from mergelab.experiment.runner import peak_memory_bytes
    from mergelab.experiment.scoring import METRIC_OF_KIND, task_outcomes

    local = Path(job.model).expanduser()
    if not local.exists() and (
        local.is_absolute() or job.model.startswith((".", "~")) or "/" not in job.model
    ):
        raise ConfigError(f"model: path does not exist: {job.model}")
    device = resolve_device(job.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = load_model(job.model, device)
    tokenizer = load_tokenizer(job.model)
    started = time.perf_counter()
    scored: list[dict[str, Any]] = []  # the columns that differ from row to row
    if job.suite_tasks:
        specs = suites.load_suite(job.eval.suite).tasks
        kinds = {task: specs[task].kind for task in job.suite_tasks}
        outcomes = task_outcomes(model, tokenizer, kinds, job.eval.split, job.eval, progress=job.progress)
        for task in job.suite_tasks:
            spec, outcome = specs[task], outcomes[task]
            scored.append(
                {
                    "task": task,
                    "category": spec.category,
                    "group": spec.group,
                    "split": job.eval.split,
                    "metric": METRIC_OF_KIND[spec.kind],
                    "value": outcome.score,
                    "chance": outcome.chance,
                    "examples": outcome.examples,
                    "correct": outcome.correct,
                    "clusters": outcome.clusters,
                }
            )
    if job.harness_tasks:
        for score in harness_scores(
            model,
            tokenizer,
            job.harness_tasks,
            device,
            include_path=job.include_path,
            num_fewshot=job.num_fewshot,
            limit=job.eval.max_examples,
            batch_size=job.eval.batch_size,
        ):
            scored.append(
                {
                    "task": PREFIX + score.task,
                    "category": "lm_eval",
                    "group": "lm_eval",
                    "split": score.split,
                    "metric": score.metric,
                    "value": score.value,
                    "chance": math.nan,
                }
            )
    eval_seconds = time.perf_counter() - started
    config_hash = job.config_hash()
    merged = merge_provenance(job.model)
    hparams = merged.get("hparams", {})
    facts = {
        "run_id": f"{job.study}-{config_hash[:12]}",
        "study": job.study,
        "model": job.name,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "base_kind": "none",
        "method": merged.get("method", "none"),
        "hyperparameters": json.dumps(hparams, sort_keys=True),
        "scale": float(hparams["scale"]) if isinstance(hparams.get("scale"), (int, float)) else math.nan,
        "density": float(hparams["density"])
        if isinstance(hparams.get("density"), (int, float))
        else math.nan,
        "selection": "none",
        "expert_set": merged.get("expert_set", ""),
        "n_experts": merged.get("n_experts", 0),
        "subset_seed": 0,
        "replicate": 0,
        "reference": math.nan,
        "normalized": math.nan,
        "multitask_reference": math.nan,
        "normalized_multitask": math.nan,
        "chance_corrected": math.nan,
        "examples": None,
        "correct": None,
        "reference_correct": None,
        "multitask_correct": None,
        "clusters": None,
        "merge_seconds": math.nan,
        "eval_seconds": eval_seconds,
        "peak_memory_bytes": peak_memory_bytes(device, 0),
        "device": str(device),
        "config_hash": config_hash,
        "git_commit": results.git_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return pd.DataFrame([{**facts, **entry} for entry in scored], columns=results.COLUMNS)


def run(job: EvalJob) -> pd.DataFrame:
    """The job's rows: read from its fragment when it exists (unless `force`), else evaluated and written."""
    path = results.fragment_path(job.study, job.config_hash(), job.results_dir)
    if path.is_file() and not job.force:
        print(f"mergelab eval: done before, skipped ({path})")
        return results.read_fragment(path)
    rows = evaluate_checkpoint(job)
    results.write_fragment(rows, path)
    print(f"mergelab eval: {len(rows)} rows -> {path}")
    return rows


def main(argv: list[str]) -> int:
    """`mergelab eval [overrides]`: 0 on success; expected user errors print one line and return 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mergelab.engine.checkpoint import CheckpointError
    from mergelab.methods import MergeConfigError

    if any(arg in {"-h", "--help", "help"} for arg in argv):
        print(help_text())
        return 0
    try:
        rows = run(compose_job(argv))
    except (
        ConfigError,
        CheckpointError,
        MergeConfigError,
        HydraException,
        OmegaConfBaseException,
        OSError,
    ) as error:
        message = " ".join(str(error).split()).split(" Config search path")[0] or type(error).__name__
        print(f"mergelab eval: error: {message}", file=sys.stderr)
        return 2
    print(rows[["model", "task", "split", "metric", "value"]].to_string(index=False))
    return 0
