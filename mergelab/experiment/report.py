"""`mergelab report experiment=NAME`: a study's fragments as tables and figures, offline.

Writes into `<results_dir>/<study>/` (by default `results/<study>/`, the committed study outputs):
`rows.parquet` (every tidy row), `summary.md` (normalized held-in / held-out per configuration, averaged
over expert subsets; with 95% intervals and the reference scores' distance from chance when the rows
carry per-example correctness) and PNG figures: normalized score against the number of experts per method and base
kind, and, when the study spans several model sizes, against the parameter count. A study with its own
analyses names them in its overlay (`report.extension: mergelab.studies.ties:write_ties_report` plus
`report.options`); that function writes further tables and figures and returns their paths.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pandas as pd

from mergelab.experiment import results, score_intervals
from mergelab.experiment.config import ReportConfig
from mergelab.experiment.intervals import PairedBootstrap

RUN_KEYS = [
    "config_hash",
    "study",
    "model",
    "parameters",
    "base_kind",
    "method",
    "selection",
    "hyperparameters",
    "n_experts",
    "subset_seed",
    "replicate",
    "expert_set",
]
CONFIG_KEYS = ["model", "parameters", "base_kind", "method", "n_experts"]
SCORES = ["held_in", "held_out", "held_in_multitask", "held_out_multitask"]
CHANCE_SCORES = ["held_in_chance", "held_out_chance"]  # (score - chance) / (reference - chance)


def _aggregate(rows: pd.DataFrame, group: str, column: str) -> float:
    """Mean within each category, then across categories, of `column` over the rows of `group`.

    Tasks whose normalized score is undefined (reference score 0) are left out.
    """
    from mergelab.eval import aggregate

    if column not in rows:
        return math.nan
    subset = rows[(rows["group"] == group) & rows[column].notna()]
    if subset.empty:
        return math.nan
    return aggregate(dict(zip(subset["task"], subset[column])), dict(zip(subset["task"], subset["category"])))


def run_variant(run: pd.Series) -> str:
    """What tells apart runs of one configuration: their fixed hyperparameters, or how they were selected."""
    return run["hyperparameters"] if run["selection"] == "none" else f"select={run['selection']}"


def summarize_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its identity and its normalized held-in / held-out scores (both views)."""
    rows = rows.assign(replicate=results.replicates(rows))  # also rows read without the results schema
    records = []
    for _, run in rows.groupby("config_hash", sort=False):
        first = run.iloc[0]
        record = {key: first[key] for key in RUN_KEYS}
        record["variant"] = run_variant(first)
        record["held_in"] = _aggregate(run, "held_in", "normalized")
        record["held_out"] = _aggregate(run, "held_out", "normalized")
        record["held_in_multitask"] = _aggregate(run, "held_in", "normalized_multitask")
        record["held_out_multitask"] = _aggregate(run, "held_out", "normalized_multitask")
        informative = run[score_intervals.informative_rows(run)]
        record["held_in_chance"] = _aggregate(informative, "held_in", "chance_corrected")
        record["held_out_chance"] = _aggregate(informative, "held_out", "chance_corrected")
        records.append(record)
    return pd.DataFrame(records, columns=RUN_KEYS + ["variant"] + SCORES + CHANCE_SCORES)


def table_keys(summary: pd.DataFrame) -> list[str]:
    """What identifies a row of the study table: the configuration, and its variant when one
    configuration was run with several hyperparameter settings (ablations, sensitivity sweeps)."""
    several = not summary.empty and summary.groupby(CONFIG_KEYS)["variant"].nunique().max() > 1
    return CONFIG_KEYS + (["variant"] if several else [])


def table_scores(summary: pd.DataFrame) -> list[str]:
    """The scores the study table shows: both normalized views, and the chance-corrected ones when the
    rows record chance levels (rows recorded before them do not)."""
    return SCORES + [score for score in CHANCE_SCORES if score in summary and summary[score].notna().any()]


def study_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Scores per configuration averaged over expert subsets (`subsets` counts them); see `table_keys`."""
    grouped = summary.groupby(table_keys(summary), sort=True)
    table = grouped[table_scores(summary)].mean()
    table["subsets"] = grouped.size()
    return table.reset_index()


def summary_markdown(rows: pd.DataFrame, summary: pd.DataFrame) -> str:
    """summary.md: the study table, with each score's 95% interval when the rows carry per-example
    correctness (paired bootstrap over test examples and expert subsets)."""
    table = study_table(summary)
    study = ", ".join(sorted(rows["study"].unique()))
    text = (
        f"# {study}\n\nNormalized scores (held-in: / the category's expert; held-out: / the base zero-shot; "
        f"`_multitask`: / the multitask baseline), mean within category, then across categories, then over "
        f"expert subsets. {len(summary)} runs, {len(rows)} rows."
    )
    if not score_intervals.has_examples(rows):
        return f"{text}\n\n{to_markdown(table)}\n"
    bootstrap = PairedBootstrap()
    draws = score_intervals.study_run_draws(rows, bootstrap)
    scores = table_scores(summary)
    table = score_intervals.interval_columns(table, summary, draws, table_keys(summary), scores, bootstrap)
    references = score_intervals.reference_table(rows, bootstrap)
    flagged = references[references["near_chance"] == "yes"]
    text += (
        " `_chance`: chance-corrected, (score - chance) / (reference - chance), so 0 is a random guess and 1 "
        "the reference, over the tasks whose reference is above chance by more than 2 binomial standard "
        "errors (the references table below flags, by the bootstrap's standard error, those that are not). "
        "`_95ci`: 95% percentile interval of a paired bootstrap "
        f"({bootstrap.draws} draws, seed {bootstrap.seed}) that resamples expert subsets and, within each "
        "task, the test examples (whole entities where examples share one), the same resamples for every "
        "model and configuration."
    )
    reference_text = (
        "## References\n\nEach reference score (held-in: the category's expert; held-out: the base "
        "zero-shot) with its 95% interval, the task's chance level and the bootstrap standard error; "
        f"`near_chance`: within 2 standard errors of chance or below it, so ratios to it divide by noise "
        f"({len(flagged)} of {len(references)} references)."
    )
    return f"{text}\n\n{to_markdown(table)}\n\n{reference_text}\n\n{to_markdown(references)}\n"


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table (floats rounded to `digits`)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def print_summary(rows: pd.DataFrame) -> None:
    """The rows' per-configuration table on stdout."""
    print(to_markdown(study_table(summarize_runs(rows))))


def draw_figures(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Normalized scores vs. expert count (and vs. model size when several) as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    long = summary.melt(
        id_vars=CONFIG_KEYS + ["subset_seed"],
        value_vars=["held_in", "held_out"],
        var_name="tasks",
        value_name="normalized score",
    ).dropna(subset=["normalized score"])
    style = {
        "hue": "method",
        "style": "base_kind",
        "col": "tasks",
        "kind": "line",
        "marker": "o",
        "facet_kws": {"sharey": False},
        "height": 3.2,
        "aspect": 1.2,
        "seed": 0,  # the error bands' bootstrap: the same figure on every run
    }

    def save(grid, name: str) -> Path:
        path = out_dir / name
        grid.savefig(path, dpi=120)
        plt.close(grid.figure)
        return path

    several_models = summary["model"].nunique() > 1
    grid = sns.relplot(
        data=long, x="n_experts", y="normalized score", row="model" if several_models else None, **style
    )
    grid.set(xticks=sorted(summary["n_experts"].unique()))
    paths = [save(grid, "normalized_vs_experts.png")]
    if several_models:
        grid = sns.relplot(data=long, x="parameters", y="normalized score", **style)
        grid.set(xscale="log")
        paths.append(save(grid, "normalized_vs_size.png"))
    return paths


def write_report(rows: pd.DataFrame, out_dir: Path, settings: ReportConfig | None = None) -> list[Path]:
    """rows.parquet, summary.md and the figures of one study in `out_dir`, then the study's own extension
    (`settings.extension`, if any); returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize_runs(rows)
    rows_path = results.write_fragment(rows, out_dir / "rows.parquet")
    markdown = out_dir / "summary.md"
    markdown.write_text(summary_markdown(rows, summary))
    paths = [rows_path, markdown, *draw_figures(summary, out_dir)]
    if settings is not None and settings.extension is not None:
        module_name, function = settings.extension.split(":")
        extend = getattr(importlib.import_module(module_name), function)
        paths += extend(rows, summary, out_dir, **settings.options)
    return paths


def main(argv: list[str]) -> int:
    """`mergelab report experiment=NAME [results_dir=...]`: tables and figures of the study."""
    from mergelab.experiment.config import ConfigError
    from mergelab.experiment.run_checks import check_study
    from mergelab.experiment.sweep import compose

    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: mergelab report experiment=NAME [results_dir=DIR]  (or study=NAME)")
        return 0
    try:
        config = compose(argv)
        check_study(config.study)
        rows = results.load(config.study, config.results_dir)
    except (ConfigError, results.ResultsError) as error:
        print(f"mergelab report: error: {error}", file=sys.stderr)
        return 2
    if rows.empty:
        print(
            f"mergelab report: error: no results for study '{config.study}' in "
            f"{results.fragment_dir(config.study, config.results_dir)}; run `mergelab run -m {' '.join(argv)}`",
            file=sys.stderr,
        )
        return 1
    paths = write_report(rows, Path(config.results_dir) / config.study, config.report)
    print(to_markdown(study_table(summarize_runs(rows))))
    for path in paths:
        print(f"wrote {path}")
    return 0
