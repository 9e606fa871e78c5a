"""experiments/ties: the TIES-Merging analyses that `mergelab report` adds for the `ties_*` studies.

Each study module (`ties_methods`, `ties_ablation`, `ties_sensitivity`, `ties_micro`) calls
`write_ties_report`, which writes every analysis its rows support:

- `runs.md`: every run with its decoded TIES options and its normalized held-in / held-out scores;
- `methods.png`: the methods side by side (when the study compares several, one run each);
- `ablation.md`: the paper's Table 6 on the zoo: full TIES and TIES without one step, in points of
  normalized score against full TIES, per condition and as mean [min, max] over conditions;
- `methods.md` (when the rows carry per-example outcomes): each other method at its paper defaults against
  TIES at its own, in points, with 95% intervals and the verdict against the paper (TIES ahead);
- `options.md`: `trim_scope` x `sign` at the paper's density and scale;
- `sensitivity.png` / `sensitivity.md`: scores against TIES density (scale 1), TIES scale (density 0.2) and
  task-arithmetic scale;
- `sign_conflicts.{csv,md,png}` (when asked): the share of parameters with a sign conflict among the zoo
  experts against their number (see `mergelab.studies.sign_conflicts`). The CSV is computed from the zoo
  when missing or when it records other experts than the zoo built here (`zoo_digest`), so a committed
  table regenerates its figure without the zoo and a rebuilt zoo is never reported with its old experts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from mergelab.experiment import results, score_intervals
from mergelab.experiment.intervals import PairedBootstrap, percentile_interval, verdict
from mergelab.experiment.report import to_markdown
from mergelab.experiment.score_intervals import RunDraws

TIES_DEFAULTS = {
    "density": 0.2,
    "scale": 1.0,
    "trim_scope": "global",
    "sign": "sum",
    "elect": True,
    "agg": "mean",
}
OPTIONS = list(TIES_DEFAULTS)
SCORES = ["held_in", "held_out"]
ABLATION = {  # variant -> (the options it changes from full TIES, selection)
    "TIES (scale searched)": ({}, "validation"),
    "w/o trim (density 1)": ({"density": 1.0}, "validation"),
    "w/o elect": ({"elect": False}, "validation"),
    "w/o disjoint mean (agg mean_all)": ({"agg": "mean_all"}, "validation"),
    "w/o scale search (scale 1)": ({}, "none"),
}
FIXED_SCALE_ABLATION = {
    "TIES (scale 1)": ({}, "none"),
    "w/o trim (density 1)": ({"density": 1.0}, "none"),
    "w/o elect": ({"elect": False}, "none"),
    "w/o disjoint mean (agg mean_all)": ({"agg": "mean_all"}, "none"),
}
METHODS = {  # method at its paper defaults, no search (TIES first: the reference) -> (method, selection)
    "TIES (scale 1)": ("ties", "none"),
    "average": ("average", "none"),
    "task_arithmetic": ("task_arithmetic", "none"),
    "dare": ("dare", "none"),
}


def decode_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """The run summary with each hyperparameter in its own column (NaN / None where a method lacks it)."""
    decoded = summary.copy()
    hyperparameters = [json.loads(text) for text in decoded["hyperparameters"]]
    for option in OPTIONS:
        decoded[option] = [values.get(option) for values in hyperparameters]
    decoded["density"] = decoded["density"].astype(float)
    decoded["scale"] = decoded["scale"].astype(float)
    return decoded


def _ties_with(runs: pd.DataFrame, options: dict) -> pd.Series:
    """The TIES runs whose `options` have the given values."""
    mask = runs["method"] == "ties"
    for option, value in options.items():
        mask &= runs[option] == value
    return mask


def _matches(runs: pd.DataFrame, changes: dict, selection: str) -> pd.Series:
    """TIES runs with `selection` whose options are the paper's defaults except `changes` (any scale when
    the scale was searched)."""
    wanted = {**TIES_DEFAULTS, **changes}
    if selection == "validation":
        wanted.pop("scale")
    return _ties_with(runs, wanted) & (runs["selection"] == selection)


def _method_at_defaults(runs: pd.DataFrame, method: str, selection: str) -> pd.Series:
    """Runs of `method` with `selection`; for TIES only those at the paper's defaults (not the ablation)."""
    if method == "ties":
        return _matches(runs, {}, selection)
    return (runs["method"] == method) & (runs["selection"] == selection)


def _with_default_steps(runs: pd.DataFrame) -> pd.Series:
    """TIES runs with the paper's trim scope, sign rule, election and disjoint mean (any density, scale)."""
    steps = ("trim_scope", "sign", "elect", "agg")
    return _ties_with(runs, {option: TIES_DEFAULTS[option] for option in steps})


def _several_replicates(runs: pd.DataFrame) -> bool:
    """Whether the runs merge experts of more than one independently fine-tuned replicate."""
    return results.replicates(runs).nunique() > 1


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per run (with its expert replicate when the runs hold several); options a method does not
    have are shown as '-'."""
    condition = ["model", "base_kind"] + (["replicate"] if _several_replicates(runs) else [])
    columns = [*condition, "method", "selection", *OPTIONS, *SCORES]
    table = runs[columns].sort_values([*condition, "method", "selection", "density", "scale"])
    for option in OPTIONS:
        table[option] = [
            "-" if value is None or (isinstance(value, float) and math.isnan(value)) else value
            for value in table[option]
        ]
    return table


def ablation_tables(
    runs: pd.DataFrame,
    variants: dict,
    draws: RunDraws | None = None,
    match: Callable[..., pd.Series] = _matches,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per condition (model, base kind, and expert replicate when the runs hold several) each variant's
    scores and their change in points (x100) against the first variant; and per variant the mean [min, max] change over conditions. `match(runs, *value)`
    finds a variant's runs from its entry in `variants`. With the runs' bootstrap `draws` (paired: the
    same resampled examples for every run), each change also gets its 95% interval (`_95ci`), and each
    variant's mean change its interval and the verdict against the paper, which finds every other variant
    below the first (leaving out any step or the scale search, or another method than TIES)."""
    records, changes = [], []
    keys = ["model", "base_kind"] + (["replicate"] if _several_replicates(runs) else [])
    for values, condition in runs.groupby(keys, sort=True):
        reference = None
        for variant, (options, selection) in variants.items():
            found = condition[match(condition, options, selection)]
            if found.empty:
                continue
            run = found.iloc[0]
            reference = run if reference is None else reference
            record = {
                **dict(zip(keys, values)),
                "variant": variant,
                "scale": run["scale"],
                **{score: run[score] for score in SCORES},
                **{f"d_{score}": 100 * (run[score] - reference[score]) for score in SCORES},
            }
            if draws is not None:
                change = {
                    score: 100 * (draws[run["config_hash"]][score] - draws[reference["config_hash"]][score])
                    for score in SCORES
                }
                changes.append(change)
                for score in SCORES:
                    record[f"d_{score}_95ci"] = percentile_interval(
                        record[f"d_{score}"], change[score]
                    ).format(2, signed=True)
            records.append(record)
    per_condition = pd.DataFrame(records)
    if per_condition.empty:
        return per_condition, per_condition
    grouped = per_condition.groupby("variant", sort=False)
    overall = pd.DataFrame(
        {
            "variant": list(grouped.groups),
            "conditions": grouped.size().to_numpy(),
            **{
                f"d_{score}": [
                    f"{values.mean():+.1f} [{values.min():+.1f}, {values.max():+.1f}]"
                    for _, values in grouped[f"d_{score}"]
                ]
                for score in SCORES
            },
        }
    )
    if draws is not None:
        reference_variant = next(iter(variants))
        for score in SCORES:
            cells, verdicts = [], []
            for variant in overall["variant"]:
                indices = grouped.indices[variant]
                mean_change = np.nanmean(np.stack([changes[index][score] for index in indices]), axis=0)
                estimate = float(per_condition[f"d_{score}"].iloc[indices].mean())
                interval = percentile_interval(estimate, mean_change)
                cells.append(interval.format(2, signed=True))
                verdicts.append("-" if variant == reference_variant else verdict(interval, -1))
            overall[f"d_{score}_95ci"] = cells
            overall[f"verdict_{score}"] = verdicts
    return per_condition, overall


def sensitivity_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table of the three one-dimensional sweeps (no selection): sweep, x, condition, scores."""
    fixed = runs[runs["selection"] == "none"]
    ties = fixed[_with_default_steps(fixed)]
    curves = [
        ties[ties["scale"] == 1.0].assign(sweep="TIES density (scale 1)", x=lambda frame: frame["density"]),
        ties[ties["density"] == 0.2].assign(sweep="TIES scale (density 0.2)", x=lambda frame: frame["scale"]),
        fixed[fixed["method"] == "task_arithmetic"].assign(
            sweep="task arithmetic scale", x=lambda frame: frame["scale"]
        ),
    ]
    long = pd.concat(curves, ignore_index=True)
    counts = long.groupby("sweep")["x"].nunique()
    long = long[long["sweep"].map(counts) >= 3]
    return long[["sweep", "x", "model", "base_kind", *SCORES]].sort_values(
        ["sweep", "model", "base_kind", "x"]
    )


def sensitivity_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Per sweep and condition: the best x for held-in and the spread (max - min) of each score."""
    records = []
    for (sweep, model, kind), curve in curves.groupby(["sweep", "model", "base_kind"], sort=True):
        best = curve.loc[curve["held_in"].idxmax()]
        records.append(
            {
                "sweep": sweep,
                "model": model,
                "base_kind": kind,
                "points": len(curve),
                "best_x_held_in": best["x"],
                "best_held_in": best["held_in"],
                "held_in_range": curve["held_in"].max() - curve["held_in"].min(),
                "held_out_range": curve["held_out"].max() - curve["held_out"].min(),
            }
        )
    return pd.DataFrame(records)


def _draw(kind: str, data: pd.DataFrame, path: Path, **style) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    long = data.melt(
        id_vars=[column for column in data.columns if column not in SCORES],
        value_vars=SCORES,
        var_name="tasks",
        value_name="normalized score",
    ).dropna(subset=["normalized score"])
    plot = sns.catplot if kind == "bar" else sns.relplot
    grid = plot(data=long, y="normalized score", kind=kind, height=3.0, aspect=1.2, seed=0, **style)
    grid.set_titles("{row_name} | {col_name}", size=9)
    if kind == "bar":
        grid.tick_params(axis="x", labelrotation=20)
    grid.savefig(path, dpi=120)
    plt.close(grid.figure)
    return path


def _write_markdown(path: Path, title: str, text: str, table: pd.DataFrame) -> Path:
    path.write_text(f"# {title}\n\n{text}\n\n{to_markdown(table)}\n")
    return path


def write_conflicts(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """sign_conflicts.csv (computed from the zoo when missing or stale), its markdown table and its figure."""
    from mergelab.studies.sign_conflicts import draw_sign_conflicts, random_sign_conflict, zoo_sign_conflicts

    table_path = out_dir / "sign_conflicts.csv"
    table = pd.read_csv(table_path, dtype={"zoo_digest": str}) if table_path.is_file() else None
    if table is None or _zoo_rebuilt_since(table):
        conditions = sorted(set(zip(rows["model"], rows["base_kind"])))
        table = zoo_sign_conflicts(conditions)
        table.to_csv(table_path, index=False)
    if "random_signs" not in table:  # a table computed before the baseline: its exact value needs no zoo
        table["random_signs"] = table["n_experts"].map(random_sign_conflict)
    text = (
        "Share of parameters where the experts' task vectors hold both signs, over every subset of each size "
        "of the eight zoo experts (mean, min, max); `top 0.2`: each task vector trimmed to its top 20% by "
        "magnitude over the whole model, as TIES trims. Null baseline: `random_signs` = 1 - 2^(1-n), the "
        "share if every entry were nonzero with an independent fair-coin sign"
        + (
            "; `random_signs_masks`: the share expected with the experts' actual nonzero masks and fair-coin "
            "signs (mean over subsets)."
            if "random_signs_masks" in table
            else " (the table predates the mask-based baseline; recompute it from the zoo to add it)."
        )
    )
    markdown = _write_markdown(
        out_dir / "sign_conflicts.md", "Sign conflicts vs number of experts", text, table
    )
    return [table_path, markdown, draw_sign_conflicts(table, out_dir / "sign_conflicts.png")]


def _zoo_rebuilt_since(table: pd.DataFrame) -> bool:
    """Whether a conflict table records experts other than the zoo built here has (a table without
    `zoo_digest`, computed before it was recorded, and a size not built here are taken as they are)."""
    from mergelab.studies.sign_conflicts import zoo_experts_digest

    if "zoo_digest" not in table:
        return False
    recorded = table.drop_duplicates(["model", "base_kind"])
    for size, base_kind, digest in zip(recorded["model"], recorded["base_kind"], recorded["zoo_digest"]):
        current = zoo_experts_digest(size, base_kind)
        if current is not None and current != digest:
            return True
    return False


def write_method_comparison(runs: pd.DataFrame, draws: RunDraws, out_dir: Path) -> list[Path]:
    """`methods.md`: each other method at its paper defaults minus TIES at its own, in points, per condition
    and as the mean over conditions with its paired 95% interval and verdict; nothing when TIES or every
    other method is missing. Needs the bootstrap `draws`: without intervals a comparison has no verdict."""
    per_condition, overall = ablation_tables(runs, METHODS, draws, match=_method_at_defaults)
    if len(overall) < 2 or overall["variant"].iloc[0] != next(iter(METHODS)):
        return []
    text = (
        "Change in points (x100 normalized score) of each method at its paper defaults (no search) against "
        "TIES at its defaults (density 0.2, scale 1) in the same condition; overall: mean [min, max] over "
        "conditions (model x base kind, x expert replicate when the runs hold several). `_95ci`: 95% "
        "interval of the change (of the mean change, overall) from a paired bootstrap over the test examples of each task (whole entities where they share one), "
        "the same resamples for every run; `verdict`: the paper finds TIES ahead of the other methods, so "
        "reproduced when the interval lies below zero, contradicted when above, else not resolved."
    )
    path = out_dir / "methods.md"
    path.write_text(
        f"# TIES vs the other methods\n\n{text}\n\n{to_markdown(overall, 2)}\n\n"
        f"## Per condition\n\n{to_markdown(per_condition)}\n"
    )
    return [path]


def write_ties_report(
    rows: pd.DataFrame, summary: pd.DataFrame, out_dir: Path, sign_conflicts: bool = False
) -> list[Path]:
    """Every TIES analysis the rows support, written into `out_dir`; returns the paths written."""
    runs = decode_runs(summary)
    paths = [
        _write_markdown(
            out_dir / "runs.md",
            "Runs",
            "Every run: its TIES options ('-' where a method lacks one), the selection, and the normalized "
            "held-in (/ expert) and held-out (/ base zero-shot) scores.",
            runs_table(runs),
        )
    ]
    one_run_per_method = not runs.duplicated(["model", "base_kind", "selection", "method"]).any()
    if runs["method"].nunique() > 1 and one_run_per_method:
        runs = runs.assign(setting=runs["base_kind"] + ", select " + runs["selection"])
        paths.append(
            _draw(
                "bar",
                runs[["model", "method", "setting", *SCORES]],
                out_dir / "methods.png",
                x="method",
                order=sorted(runs["method"].unique()),
                hue="setting",
                hue_order=sorted(runs["setting"].unique()),
                col="tasks",
                row="model",
                sharey=False,
            )
        )
    draws = None
    if score_intervals.has_examples(rows):
        bootstrap = PairedBootstrap()
        draws = score_intervals.study_run_draws(rows, bootstrap)
    per_condition, overall = ablation_tables(runs, ABLATION, draws)
    fixed, fixed_overall = ablation_tables(runs, FIXED_SCALE_ABLATION, draws)
    sections = []
    if len(overall) > 1:
        sections.append(f"{to_markdown(overall, 2)}\n\n## Per condition\n\n{to_markdown(per_condition)}")
    if len(fixed_overall) > 1:
        sections.append(
            f"## Every variant at scale 1 (no search)\n\n{to_markdown(fixed_overall, 2)}\n\n{to_markdown(fixed)}"
        )
    if sections:
        text = (
            "Change in points (x100 normalized score) against full TIES in the same condition; overall: mean "
            "[min, max] over conditions (model x base kind, x expert replicate when the runs hold several). "
            "Searched variants pick the scale on the validation splits from the study's `select_grid` "
            "(`scale` is the chosen one)."
        )
        if draws is not None:
            text += (
                f" `_95ci`: 95% interval of the change (of the mean change, overall) from a paired bootstrap "
                f"({bootstrap.draws} draws) over the test examples of each task (whole entities where they share "
                "one), the same resamples for every run; `verdict`: the paper finds every step helps, so "
                "reproduced when the interval lies below zero, contradicted when above, else not resolved."
            )
        paths.append(out_dir / "ablation.md")
        paths[-1].write_text(f"# TIES ablation\n\n{text}\n\n" + "\n\n".join(sections) + "\n")
    if draws is not None:
        paths += write_method_comparison(runs, draws, out_dir)
    fixed_steps = {option: TIES_DEFAULTS[option] for option in ("density", "scale", "elect", "agg")}
    options = runs[_ties_with(runs, fixed_steps) & (runs["selection"] == "none")]
    combinations = options.groupby(["model", "base_kind"])["trim_scope"].transform("size")
    options = options[combinations > 1]  # conditions where trim_scope / sign were varied
    if len(options[["trim_scope", "sign"]].drop_duplicates()) > 1:
        table = options[["model", "base_kind", "trim_scope", "sign", *SCORES]].sort_values(
            ["model", "base_kind", "trim_scope", "sign"]
        )
        paths.append(
            _write_markdown(out_dir / "options.md", "TIES trim_scope x sign", "Density 0.2, scale 1.", table)
        )
    curves = sensitivity_curves(runs)
    if not curves.empty:
        curves = curves.assign(condition=curves["model"] + "/" + curves["base_kind"])
        paths.append(
            _draw(
                "line",
                curves[["sweep", "x", "condition", *SCORES]],
                out_dir / "sensitivity.png",
                x="x",
                hue="condition",
                col="sweep",
                row="tasks",
                marker="o",
                facet_kws={"sharex": False, "sharey": False},
            )
        )
        paths.append(
            _write_markdown(
                out_dir / "sensitivity.md",
                "TIES sensitivity",
                "Per one-dimensional sweep (no selection): the x with the best held-in score and the range "
                "(max - min) of each normalized score over the sweep.",
                sensitivity_summary(curves),
            )
        )
    if sign_conflicts:
        paths += write_conflicts(rows, out_dir)
    return paths
