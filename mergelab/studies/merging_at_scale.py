"""`mergelab report` extension of "What Matters for Model Merging at Scale?" (experiments/merging_at_scale).

From the study's runs it writes `findings.md` (scores per configuration with their spread across expert
subsets and the chosen hyperparameters, the multitask baseline, the paper's points of comparison beside
ours, and one statistic per finding of the paper) and three figures: normalized score vs model size per
method and base kind, vs number of experts per size, and merged vs the multitask baseline.

Spread across subsets: the runs of one subset seed, together with the runs whose configuration has a
single subset (all experts merged), form one "seed view"; every finding's statistic is computed on each
view and reported as mean [min, max] over the views. Runs with the same subset seed and expert count
merge the same categories whatever the base kind or method, so comparisons within a view are paired.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from mergelab.experiment.report import CONFIG_KEYS, to_markdown
from mergelab.studies.merging_at_scale_figures import draw_figures

SCORES = ["held_in", "held_out", "held_in_multitask", "held_out_multitask"]
GROUP_LABELS = {"held_in": "held-in", "held_out": "held-out"}
KIND_LABELS = {"base": "pretrained base", "it": "IT base"}


def subset_spread(summary: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: mean and standard deviation over expert subsets of each score, the number of
    subsets, and the hyperparameters chosen (distinct JSON values joined by ' | ')."""
    grouped = summary.groupby(CONFIG_KEYS, sort=True)
    table = grouped[SCORES].mean()
    for score in ("held_in", "held_out"):
        table[f"{score}_sd"] = grouped[score].std(ddof=0)
    table["subsets"] = grouped.size()
    table["hyperparameters"] = grouped["hyperparameters"].agg(lambda values: " | ".join(sorted(set(values))))
    return table.reset_index()


def multitask_baseline(rows: pd.DataFrame) -> pd.DataFrame:
    """The multitask baseline's own normalized scores per (model, base kind): held-in = multitask / the
    category's expert over all held-in tasks seen in the study, held-out = multitask / the base zero-shot;
    mean within category, then across categories (the merged models' aggregation)."""
    from mergelab.eval import aggregate

    records = []
    references = rows.drop_duplicates(["model", "base_kind", "task"])
    for (model, base_kind), tasks in references.groupby(["model", "base_kind"], sort=True):
        record = {"model": model, "parameters": int(tasks["parameters"].iloc[0]), "base_kind": base_kind}
        for group in ("held_in", "held_out"):
            subset = tasks[(tasks["group"] == group) & (tasks["reference"] > 0)]
            ratios = dict(zip(subset["task"], subset["multitask_reference"] / subset["reference"]))
            categories = dict(zip(subset["task"], subset["category"]))
            record[group] = aggregate(ratios, categories) if ratios else math.nan
        records.append(record)
    return pd.DataFrame(records, columns=["model", "parameters", "base_kind", "held_in", "held_out"])


def seed_views(summary: pd.DataFrame) -> list[pd.DataFrame]:
    """One table per subset seed: that seed's runs plus the runs of single-subset configurations."""
    sizes = summary.groupby(CONFIG_KEYS)["config_hash"].transform("size")
    shared = summary[sizes == 1]
    seeds = sorted(summary.loc[sizes > 1, "subset_seed"].unique())
    if not seeds:
        return [summary]
    return [pd.concat([summary[(sizes > 1) & (summary["subset_seed"] == seed)], shared]) for seed in seeds]


def config_means(view: pd.DataFrame) -> pd.DataFrame:
    """Scores per configuration of one seed view (one run each)."""
    return view.groupby(CONFIG_KEYS, sort=True)[SCORES].mean().reset_index()


def paired_difference(table: pd.DataFrame, column: str, high, low, score: str) -> pd.Series:
    """score(column == high) - score(column == low) for every configuration that has both (none when high is
    low: a study with one model size or one expert count has no such comparison)."""
    others = [name for name in ["model", "base_kind", "method", "n_experts"] if name != column]
    pivot = table.pivot_table(index=others, columns=column, values=score)
    if high == low or high not in pivot or low not in pivot:
        return pd.Series(dtype=float)
    return (pivot[high] - pivot[low]).dropna()


def _extremes(summary: pd.DataFrame) -> tuple[str, str]:
    """The smallest and the largest model of the study (by parameter count)."""
    order = summary.drop_duplicates("model").sort_values("parameters")["model"].tolist()
    return order[0], order[-1]


def finding_statistics(summary: pd.DataFrame) -> list[dict]:
    """One statistic per finding of the paper (and its complement where useful), each a function of a
    seed view's configuration table; see `findings_table` for how views are combined."""
    smallest, largest = _extremes(summary)
    counts = sorted(summary["n_experts"].unique())
    fewest, most = counts[0], counts[-1]

    def mean_of(series: pd.Series) -> float:
        return float(series.mean()) if len(series) else math.nan

    def share_positive(series: pd.Series) -> float:
        return float((series > 0).mean()) if len(series) else math.nan

    def where(table: pd.DataFrame, **values) -> pd.DataFrame:
        """The rows of `table` whose columns equal `values` (None: any)."""
        for column, value in values.items():
            table = table if value is None else table[table[column] == value]
        return table

    def expert_gain(table: pd.DataFrame, model: str, score: str, base_kind: str | None = None) -> float:
        at = where(table, model=model, base_kind=base_kind)
        return mean_of(paired_difference(at, "n_experts", most, fewest, score))

    def method_spread(
        table: pd.DataFrame, model: str, score: str, n_experts: int | None, methods: list[str] | None = None
    ) -> float:
        at = where(table, model=model, base_kind="it")
        at = at if methods is None else at[at["method"].isin(methods)]
        if n_experts is not None:
            at = at[at["n_experts"] == n_experts]
        spread = at.groupby("n_experts")[score].agg(
            lambda values: values.max() - values.min() if len(values) > 1 else math.nan
        )
        return mean_of(spread)

    def kind_gap(score: str, model: str | None = None) -> Callable[[pd.DataFrame], float]:
        return lambda table: mean_of(
            paired_difference(where(table, model=model), "base_kind", "it", "base", score)
        )

    def kind_share(score: str) -> Callable[[pd.DataFrame], float]:
        return lambda table: share_positive(paired_difference(table, "base_kind", "it", "base", score))

    def size_gap(score: str, base_kind: str | None = None) -> Callable[[pd.DataFrame], float]:
        return lambda table: mean_of(
            paired_difference(where(table, base_kind=base_kind), "model", largest, smallest, score)
        )

    def size_share(score: str, base_kind: str | None = None) -> Callable[[pd.DataFrame], float]:
        return lambda table: share_positive(
            paired_difference(where(table, base_kind=base_kind), "model", largest, smallest, score)
        )

    def mean_where(score: str, model: str | None = None, base_kind: str | None = None):
        def statistic(table: pd.DataFrame) -> float:
            at = table if model is None else table[table["model"] == model]
            at = at if base_kind is None else at[at["base_kind"] == base_kind]
            return mean_of(at[score])

        return statistic

    def share_above_one(score: str) -> Callable[[pd.DataFrame], float]:
        return lambda table: float((table[score].dropna() > 1).mean())

    span = f"{fewest} -> {most} experts"
    models = list(dict.fromkeys([smallest, largest]))
    expert_counts = list(dict.fromkeys([most, None]))
    without_dare = [name for name in sorted(summary["method"].unique()) if name != "dare"]
    return [
        {
            "finding": 1,
            "statistic": "held-in: IT base - base (mean over size, method, experts)",
            "of": kind_gap("held_in"),
        },
        {
            "finding": 1,
            "statistic": "held-in: share of configurations where IT > base",
            "of": kind_share("held_in"),
        },
        {"finding": 1, "statistic": "held-out: IT base - base", "of": kind_gap("held_out")},
        {"finding": 1, "statistic": "held-out: share where IT > base", "of": kind_share("held_out")},
        *[
            {
                "finding": 1,
                "statistic": f"{GROUP_LABELS[score]} at {model}: IT base - base",
                "of": kind_gap(score, model),
            }
            for score in ("held_in", "held_out")
            for model in models
        ],
        {
            "finding": 2,
            "statistic": f"held-in: {largest} - {smallest} (mean over kind, method, experts)",
            "of": size_gap("held_in"),
        },
        {
            "finding": 2,
            "statistic": f"held-in: share where {largest} > {smallest}",
            "of": size_share("held_in"),
        },
        {"finding": 2, "statistic": f"held-out: {largest} - {smallest}", "of": size_gap("held_out")},
        *[
            {
                "finding": 2,
                "statistic": f"held-in, {KIND_LABELS[kind]}: {largest} - {smallest}",
                "of": size_gap("held_in", kind),
            }
            for kind in ("base", "it")
        ],
        *[
            {
                "finding": 2,
                "statistic": f"held-in, {KIND_LABELS[kind]}: share where {largest} > {smallest}",
                "of": size_share("held_in", kind),
            }
            for kind in ("base", "it")
        ],
        {
            "finding": 3,
            "statistic": "held-out / base zero-shot: mean over all configurations",
            "of": mean_where("held_out"),
        },
        {
            "finding": 3,
            "statistic": "held-out / base zero-shot: share of configurations > 1",
            "of": share_above_one("held_out"),
        },
        {
            "finding": 3,
            "statistic": f"held-out / base zero-shot: {largest}, IT base",
            "of": mean_where("held_out", largest, "it"),
        },
        {
            "finding": 3,
            "statistic": "held-out / multitask: share of configurations > 1",
            "of": share_above_one("held_out_multitask"),
        },
        {
            "finding": 3,
            "statistic": f"held-out / multitask: {largest}, IT base",
            "of": mean_where("held_out_multitask", largest, "it"),
        },
        *[
            {
                "finding": 4,
                "statistic": f"{GROUP_LABELS[score]} change {span}: {model}",
                "of": lambda table, model=model, score=score: expert_gain(table, model, score),
            }
            for score in ("held_in", "held_out")
            for model in models
        ],
        *[
            {
                "finding": 4,
                "statistic": f"{GROUP_LABELS[score]} change {span}, {KIND_LABELS[kind]}: {model}",
                "of": lambda table, model=model, score=score, kind=kind: expert_gain(
                    table, model, score, kind
                ),
            }
            for score in ("held_in", "held_out")
            for kind in ("base", "it")
            for model in models
        ],
        *[
            {
                "finding": 5,
                "statistic": f"{GROUP_LABELS[score]} spread across {', '.join(without_dare)}, IT base, {most} experts: {model}",
                "of": lambda table, model=model, score=score: method_spread(
                    table, model, score, most, without_dare
                ),
            }
            for score in ("held_in", "held_out")
            for model in models
        ],
        *[
            {
                "finding": 5,
                "statistic": f"{GROUP_LABELS[score]} spread across methods (max - min), IT base, {label}: {model}",
                "of": lambda table, model=model, score=score, n_experts=n_experts: method_spread(
                    table, model, score, n_experts
                ),
            }
            for score in ("held_in", "held_out")
            for n_experts in expert_counts
            for label in [f"{most} experts" if n_experts else "mean over expert counts"]
            for model in models
        ],
    ]


def findings_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Every finding statistic: mean over the seed views and its [min, max] (the spread across subsets)."""
    tables = [config_means(view) for view in seed_views(summary)]
    records = []
    for entry in finding_statistics(summary):
        values = np.array([entry["of"](table) for table in tables], dtype=float)
        defined = values[~np.isnan(values)]
        records.append(
            {
                "finding": entry["finding"],
                "statistic": entry["statistic"],
                "value": float(defined.mean()) if defined.size else math.nan,
                "min": float(defined.min()) if defined.size else math.nan,
                "max": float(defined.max()) if defined.size else math.nan,
                "views": int(defined.size),
            }
        )
    return pd.DataFrame(records)


def paper_comparison(spread: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """The paper's points of comparison (task arithmetic 2 -> 8 experts; all methods at 8 experts on the
    largest IT base) beside ours, for the largest and the smallest model of the study."""
    smallest = spread.sort_values("parameters")["model"].iloc[0]
    largest = spread.sort_values("parameters")["model"].iloc[-1]
    fewest, most = spread["n_experts"].min(), spread["n_experts"].max()

    def score(model: str, kind: str, method: str, n_experts: int, column: str) -> str:
        row = spread[
            (spread["model"] == model)
            & (spread["base_kind"] == kind)
            & (spread["method"] == method)
            & (spread["n_experts"] == n_experts)
        ]
        if row.empty:
            return "n/a"
        value, sd = row[column].iloc[0], row.get(f"{column}_sd", pd.Series([math.nan])).iloc[0]
        return f"{value:.3f}" + (
            f" (sd {sd:.3f})" if not math.isnan(sd) and row["subsets"].iloc[0] > 1 else ""
        )

    def baseline_score(model: str, kind: str, column: str) -> str:
        row = baseline[(baseline["model"] == model) & (baseline["base_kind"] == kind)]
        return f"{row[column].iloc[0]:.3f}" if not row.empty else "n/a"

    ta = "task_arithmetic"
    lines = [
        (
            "task arithmetic, largest IT base: held-in",
            "PaLM-2-IT 64B: 1.00 -> 0.93",
            f"{largest}-it: {score(largest, 'it', ta, fewest, 'held_in')} -> {score(largest, 'it', ta, most, 'held_in')}",
        ),
        (
            "multitask baseline, largest IT base: held-in",
            "0.99",
            f"{largest}-it: {baseline_score(largest, 'it', 'held_in')}",
        ),
        (
            "task arithmetic, largest IT base: held-out",
            "1.00 -> 1.09",
            f"{largest}-it: {score(largest, 'it', ta, fewest, 'held_out')} -> {score(largest, 'it', ta, most, 'held_out')}",
        ),
        (
            "multitask baseline, largest IT base: held-out",
            "1.05",
            f"{largest}-it: {baseline_score(largest, 'it', 'held_out')}",
        ),
        (
            "task arithmetic, smallest base: held-in",
            "PaLM-2 1B: 0.66 -> 0.39",
            f"{smallest}-base: {score(smallest, 'base', ta, fewest, 'held_in')} -> {score(smallest, 'base', ta, most, 'held_in')}",
        ),
    ]
    for method in sorted(spread["method"].unique()):
        lines.append(
            (
                f"{method}, {most} experts, largest IT base: held-in / held-out",
                "~0.93 / 1.09-1.10",
                f"{largest}-it: {score(largest, 'it', method, most, 'held_in')} / {score(largest, 'it', method, most, 'held_out')}",
            )
        )
    return pd.DataFrame(lines, columns=["comparison", "paper", f"ours ({fewest} -> {most} experts)"])


def chosen_hyperparameters(spread: pd.DataFrame) -> pd.DataFrame:
    """The hyperparameters selected on validation per configuration (one column per name)."""
    records = []
    for row in spread.itertuples(index=False):
        for choice in row.hyperparameters.split(" | "):
            values = json.loads(choice)
            selected = {name: values[name] for name in ("scale", "density") if name in values}
            if selected:
                records.append(
                    {
                        "model": row.model,
                        "base_kind": row.base_kind,
                        "method": row.method,
                        "n_experts": row.n_experts,
                        **selected,
                    }
                )
    return pd.DataFrame(records)


def write_merging_at_scale_report(rows: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """findings.md and the study's three figures in `out_dir`; returns their paths."""
    spread = subset_spread(summary)
    baseline = multitask_baseline(rows)
    findings = findings_table(summary)
    choices = chosen_hyperparameters(spread)
    shown = spread.drop(columns=["hyperparameters"])
    text = "\n\n".join(
        [
            f"# {', '.join(sorted(rows['study'].unique()))}: findings",
            "Normalized scores per configuration: mean over expert subsets and its standard deviation "
            "(`_sd`, population sd over the subsets).",
            to_markdown(shown),
            "## Multitask baseline (its own normalized scores: held-in / the experts, held-out / the base)",
            to_markdown(baseline),
            "## The paper's points of comparison",
            to_markdown(paper_comparison(spread, baseline)),
            "## Findings\n\nEach statistic on every seed view (one subset seed's runs plus the all-expert runs); "
            "`value` is the mean over the views, `min` / `max` their range (the spread across subsets).",
            to_markdown(findings),
            "## Hyperparameters used (scale / density; those in the study's select_grid chosen on validation)",
            to_markdown(choices) if not choices.empty else "(none searched)",
        ]
    )
    path = out_dir / "findings.md"
    path.write_text(text + "\n")
    return [path, *draw_figures(summary, baseline, out_dir)]
