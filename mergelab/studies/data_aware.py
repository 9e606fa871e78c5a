"""experiments/data_aware: the analyses `mergelab report` adds for the `data_aware_*` studies.

The three studies differ only in their experts (`data_aware_shared`: every expert from the zoo's init-0
base; `data_aware_different`, `data_aware_budget`: experts alternately from the init-0 and init-1 bases),
which the rows do not record, so the study name is the condition. Each study module calls
`write_data_aware_report`, which writes what its rows support:

- `runs.md`: every run with its expert set, PLeaS budget, normalized held-in / held-out scores and the raw
  held-in accuracy next to the experts' own and chance's (the normalized held-in score is coarse on the
  zoo's xs experts, some of which score near 0 or at chance on their own tasks);
- `tasks.md`: the raw score of every held-in task per method (or PLeaS budget), expert and chance;
- `methods.md` / `methods.png` (several methods): per method, mean [min, max] over expert subsets;
- `budget.md` / `budget.png` (PLeaS at several budgets): the same against the MLP width budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from mergelab.eval import aggregate
from mergelab.experiment.report import to_markdown

SCORES = ["held_in", "held_out", "held_in_raw", "expert_raw", "chance_raw"]
CONDITIONS = {
    "data_aware_shared": "experts from one shared base",
    "data_aware_different": "experts from two different bases",
    "data_aware_budget": "experts from two different bases",
}
METHOD_ORDER = ["average", "task_arithmetic", "ties", "fisher", "regmean", "pleas"]


def _held_in_mean(rows: pd.DataFrame, column: str) -> float:
    """Mean within category, then across categories, of `column` over a run's held-in rows."""
    held_in = rows[(rows["group"] == "held_in") & rows[column].notna()]
    if held_in.empty:
        return math.nan
    return aggregate(
        dict(zip(held_in["task"], held_in[column])), dict(zip(held_in["task"], held_in["category"]))
    )


def zoo_chance(rows: pd.DataFrame) -> dict[str, float]:
    """Chance score of each of the rows' tasks in the zoo suite, or in the earlier suite that had it (rows
    committed before suite v3); NaN for a task no zoo suite has."""
    from mergelab.eval.suites import load_suite
    from mergelab.zoo.tasks import RETIRED_TASK_CHANCE

    tasks = load_suite("zoo").tasks
    return {
        task: tasks[task].chance if task in tasks else RETIRED_TASK_CHANCE.get(task, math.nan)
        for task in rows["task"].unique()
    }


def decode_runs(rows: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """One line per run: the summary's identity and normalized scores, PLeaS's `budget` (NaN for other
    methods), and the raw held-in accuracy of the merged model (`held_in_raw`) and of the experts on their
    own tasks (`expert_raw`) and of guessing (`chance_raw`, the zoo's chance levels), averaged like the
    normalized score."""
    chance = zoo_chance(rows)
    raw = {
        config_hash: (
            _held_in_mean(run, "value"),
            _held_in_mean(run, "reference"),
            _held_in_mean(run.assign(chance=run["task"].map(chance)), "chance"),
        )
        for config_hash, run in rows.groupby("config_hash", sort=False)
    }
    runs = summary.copy()
    runs["budget"] = [float(json.loads(text).get("budget", math.nan)) for text in runs["hyperparameters"]]
    runs["held_in_raw"] = [raw[config_hash][0] for config_hash in runs["config_hash"]]
    runs["expert_raw"] = [raw[config_hash][1] for config_hash in runs["config_hash"]]
    runs["chance_raw"] = [raw[config_hash][2] for config_hash in runs["config_hash"]]
    return runs


def spread(runs: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per value of `by`: the number of runs and, per score, 'mean [min, max]' over them (expert subsets)."""
    records = []
    for value, group in runs.groupby(by, sort=False):
        record = {by: value, "subsets": len(group)}
        for score in SCORES:
            values = group[score].dropna()
            record[score] = (
                f"{values.mean():.3f} [{values.min():.3f}, {values.max():.3f}]" if len(values) else "nan"
            )
        records.append(record)
    return pd.DataFrame(records)


def task_table(rows: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per held-in task: the experts' raw score and each setting's (method, or PLeaS budget when the study
    sweeps budgets) raw score, mean over the expert subsets that contain the task, and how many they are."""
    several_budgets = runs.loc[runs["method"] == "pleas", "budget"].nunique() > 1
    settings = {
        run.config_hash: f"pleas {run.budget:g}" if several_budgets and run.method == "pleas" else run.method
        for run in runs.itertuples()
    }
    held_in = rows[rows["group"] == "held_in"].assign(setting=rows["config_hash"].map(settings))
    tasks = list(dict.fromkeys(held_in["task"]))
    table = held_in.pivot_table(index="task", columns="setting", values="value", aggfunc="mean")
    table = table[_in_method_order(table.columns)].reindex(tasks)
    table.insert(0, "expert", held_in.groupby("task")["reference"].mean())
    table.insert(0, "chance", pd.Series(zoo_chance(rows)))
    table.insert(0, "subsets", held_in.groupby("task")["subset_seed"].nunique())
    return table.reset_index()


def _in_method_order(names: Iterable[str]) -> list[str]:
    """The distinct `names` with the methods first in METHOD_ORDER, then the others sorted."""
    present = set(names)
    return [method for method in METHOD_ORDER if method in present] + sorted(present - set(METHOD_ORDER))


def _draw(runs: pd.DataFrame, x: str, order: list, path: Path, title: str) -> Path:
    """Normalized held-in and held-out scores against `x`: one point per run (expert subset) and the mean
    with its min-max range over subsets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    positions = np.array(order, dtype=float) if x == "budget" else np.arange(len(order))
    for axis, score in zip(axes, ["held_in", "held_out"]):
        for position, value in zip(positions, order):
            values = runs.loc[runs[x] == value, score].dropna()
            if values.empty:
                continue
            axis.scatter([position] * len(values), values, color="tab:gray", alpha=0.6, s=18)
            low, high = values.mean() - values.min(), values.max() - values.mean()
            axis.errorbar(position, values.mean(), yerr=[[low], [high]], fmt="o", color="tab:blue", capsize=4)
        if x == "budget":
            means = [runs.loc[runs[x] == value, score].mean() for value in order]
            axis.plot(positions, means, color="tab:blue")
        axis.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
        axis.set_ylim(bottom=0)
        axis.set_xticks(positions, [str(value) for value in order], rotation=20 if x == "method" else 0)
        axis.set_xlabel("MLP width budget (x one expert)" if x == "budget" else x)
        axis.set_ylabel(f"normalized {score.replace('_', '-')}")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _markdown(path: Path, title: str, text: str, table: pd.DataFrame) -> Path:
    path.write_text(f"# {title}\n\n{text}\n\n{to_markdown(table)}\n")
    return path


SCORE_TEXT = (
    "`held_in`: merged / expert score per task; `held_out`: merged / base zero-shot; both mean within "
    "category, then across categories. `held_in_raw` / `expert_raw`: the same average of the raw scores "
    "(accuracy or exact match) of the merged model and of each task's own expert; `chance_raw`: of guessing."
)


def write_data_aware_report(rows: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The data-aware analyses the rows support, written into `out_dir`; returns the paths written."""
    study = ", ".join(sorted(rows["study"].unique()))
    condition = CONDITIONS.get(study, study)
    runs = decode_runs(rows, summary)
    columns = ["method", "budget", "n_experts", "subset_seed", "expert_set", *SCORES]
    table = runs[columns].sort_values(["method", "budget", "n_experts", "subset_seed"], na_position="first")
    paths = [_markdown(out_dir / "runs.md", f"Runs ({condition})", SCORE_TEXT, table)]
    paths.append(
        _markdown(
            out_dir / "tasks.md",
            f"Raw held-in scores per task ({condition})",
            "Accuracy (classification) or exact match (generation) of each task's own expert and of each "
            "merged model, mean over the expert subsets holding the task (`subsets`), and of guessing "
            "(`chance`, the zoo's chance level).",
            task_table(rows, runs),
        )
    )
    settings = f"{runs['model'].iloc[0]}, {int(runs['n_experts'].iloc[0])} experts, {condition}"
    methods = _in_method_order(runs["method"])
    if len(methods) > 1:
        compared = runs[(runs["method"] != "pleas") | (runs["budget"] == 1.0)]
        paths.append(
            _markdown(
                out_dir / "methods.md",
                f"Methods ({condition})",
                f"Mean [min, max] over expert subsets; PLeaS at budget 1.0 (fully merged). {SCORE_TEXT}",
                spread(compared, "method").set_index("method").loc[methods].reset_index(),
            )
        )
        paths.append(_draw(compared, "method", methods, out_dir / "methods.png", f"Methods: {settings}"))
    pleas = runs[runs["method"] == "pleas"]
    budgets = sorted(pleas["budget"].dropna().unique())
    if len(budgets) > 1:
        paths.append(
            _markdown(
                out_dir / "budget.md",
                f"PLeaS budget curve ({condition})",
                f"Mean [min, max] over expert subsets per MLP width budget. {SCORE_TEXT}",
                spread(pleas, "budget").sort_values("budget"),
            )
        )
        paths.append(
            _draw(pleas, "budget", budgets, out_dir / "budget.png", f"PLeaS width budget: {settings}")
        )
    return paths
