"""Weights & Biases logging of one run: its config, per-task metrics and its rows as a table.

Offline by default (`logger.mode: offline`, files under `logger.dir`; `wandb sync` uploads them later).
With `logger=none`, `logger.mode: disabled` or `WANDB_MODE=disabled`, wandb is not even imported.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd

from mergelab.experiment.config import RunConfig, RunSpec


def enabled(config: RunConfig) -> bool:
    return (
        config.logger.name == "wandb"
        and config.logger.mode != "disabled"
        and os.environ.get("WANDB_MODE", "").lower() != "disabled"
    )


def run_metrics(rows: pd.DataFrame) -> dict[str, float]:
    """Flat metrics: `<group>/<task>/<metric>` and its normalized views, plus the aggregate scores."""
    from mergelab.experiment.report import summarize_runs

    metrics: dict[str, float] = {}
    for row in rows.itertuples():
        prefix = f"{row.group}/{row.task}/{row.metric}"
        metrics[prefix] = row.value
        metrics[f"{prefix}/normalized"] = row.normalized
        metrics[f"{prefix}/normalized_multitask"] = row.normalized_multitask
    summary = summarize_runs(rows).iloc[0]
    for name in ("held_in", "held_out", "held_in_multitask", "held_out_multitask"):
        metrics[f"normalized/{name}"] = float(summary[name])
    return metrics


def log_run(config: RunConfig, spec: RunSpec, rows: pd.DataFrame) -> Path | None:
    """Log one run; returns the wandb run directory, or None when logging is off."""
    if not enabled(config):
        return None
    import wandb

    directory = Path(config.logger.dir or Path(config.results_dir) / config.study / "wandb")
    directory.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=config.logger.project,
        mode=config.logger.mode,
        dir=str(directory),
        name=spec.run_id,
        group=config.study,
        config={**dataclasses.asdict(config), "categories": spec.categories, "config_hash": spec.config_hash},
    )
    try:
        run.log(run_metrics(rows))
        run.log({"results": wandb.Table(dataframe=rows)})
        return Path(run.dir).parent
    finally:
        run.finish()
