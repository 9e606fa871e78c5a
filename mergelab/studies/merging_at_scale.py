"""`mergelab report` extension of "What Matters for Model Merging at Scale?" (experiments/merging_at_scale).

From the study's runs it writes `findings.md` (scores per configuration with their spread across expert
subsets and the chosen hyperparameters, the multitask baseline, the paper's points of comparison beside
ours, and one statistic per finding of the paper) and three figures: normalized score vs model size per
method and base kind, vs number of experts per size, and merged vs the multitask baseline.

The findings' statistics, their spread across expert subsets ("seed views") and, when the rows carry
per-example correctness, their 95% intervals and verdicts are in `mergelab.studies.merging_at_scale_findings`;
the configuration table then also gives each score's 95% interval (paired bootstrap over test examples
and expert subsets, `mergelab.experiment.score_intervals`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from mergelab.experiment import score_intervals
from mergelab.experiment.intervals import PairedBootstrap
from mergelab.experiment.report import CHANCE_SCORES, CONFIG_KEYS, to_markdown
from mergelab.studies.merging_at_scale_figures import draw_figures
from mergelab.studies.merging_at_scale_findings import SCORES, findings_table


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


def chance_scores(summary: pd.DataFrame) -> list[str]:
    """The chance-corrected scores the run summary holds (rows recorded with each task's chance level)."""
    return [score for score in CHANCE_SCORES if score in summary and summary[score].notna().any()]


def write_merging_at_scale_report(rows: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """findings.md and the study's three figures in `out_dir`; returns their paths."""
    spread = subset_spread(summary)
    baseline = multitask_baseline(rows)
    choices = chosen_hyperparameters(spread)
    shown = spread.drop(columns=["hyperparameters"])
    corrected = chance_scores(summary)
    if corrected:
        means = summary.groupby(CONFIG_KEYS, sort=True)[corrected].mean().reset_index()
        shown = shown.merge(means, on=CONFIG_KEYS, how="left")
    scores_text = (
        "Normalized scores per configuration: mean over expert subsets and its standard deviation "
        "(`_sd`, population sd over the subsets)."
    )
    findings_text = (
        "Each statistic on every seed view (the runs of one subset seed of one expert replicate, plus that "
        "replicate's all-expert runs); "
        "`value` is the mean over the views, `min` / `max` their range (the spread across subsets)."
    )
    without_dare = summary[summary["method"] != "dare"]
    sensitivity = "dare" in set(summary["method"]) and not without_dare.empty
    if score_intervals.has_examples(rows):
        bootstrap = PairedBootstrap()
        draws = score_intervals.study_run_draws(rows, bootstrap)
        findings = findings_table(summary, draws, bootstrap)
        findings_without_dare = findings_table(without_dare, draws, bootstrap) if sensitivity else None
        shown = score_intervals.interval_columns(
            shown, summary, draws, CONFIG_KEYS, ["held_in", "held_out", *corrected], bootstrap
        )
        method = (
            f"95% percentile intervals (`_95ci`) from a paired bootstrap ({bootstrap.draws} draws, seed "
            f"{bootstrap.seed}) over expert subsets and the test examples of each task (whole entities where "
            "the examples share one); every configuration and statistic sees the same resamples."
        )
        scores_text += (
            f" {method} `_chance`: chance-corrected, (score - chance) / (reference - chance), mean within "
            "category, then across categories, then over subsets."
            if corrected
            else f" {method}"
        )
        findings_text += (
            " `95ci`: the statistic's 95% interval (same bootstrap). `paper`: the paper's side of the null "
            "value; `verdict`: reproduced when the interval excludes the null on the paper's side, "
            "contradicted when it excludes it on the other side, else not resolved ('-': descriptive)."
        )
    else:
        findings = findings_table(summary)
        findings_without_dare = findings_table(without_dare) if sensitivity else None
    dare_section = (
        [
            "## Findings without DARE\n\nThe same statistics on the runs of the other methods only: a check "
            "that no finding rests on DARE alone, whose untuned defaults can fail outright.",
            to_markdown(findings_without_dare),
        ]
        if sensitivity
        else []
    )
    text = "\n\n".join(
        [
            f"# {', '.join(sorted(rows['study'].unique()))}: findings",
            scores_text,
            to_markdown(shown),
            "## Multitask baseline (its own normalized scores: held-in / the experts, held-out / the base)",
            to_markdown(baseline),
            "## The paper's points of comparison",
            to_markdown(paper_comparison(spread, baseline)),
            f"## Findings\n\n{findings_text}",
            to_markdown(findings),
            *dare_section,
            "## Hyperparameters used (scale / density; those in the study's select_grid chosen on validation)",
            to_markdown(choices) if not choices.empty else "(none searched)",
        ]
    )
    path = out_dir / "findings.md"
    path.write_text(text + "\n")
    return [path, *draw_figures(summary, baseline, out_dir)]
