"""The figures of experiments/merging_at_scale (see `mergelab.studies.merging_at_scale`): normalized score
vs model size per expert count, vs number of experts per size, and merged / multitask baseline."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mergelab.experiment.report import CONFIG_KEYS


def draw_figures(summary: pd.DataFrame, baseline: pd.DataFrame, out_dir: Path) -> list[Path]:
    """scale_vs_size.png (per expert count; black: the multitask baseline, solid for the IT base, dashed
    for the base), scale_vs_experts.png (per size) and scale_vs_multitask.png (merged / multitask per
    size); error bars: sd across expert subsets; dotted line at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import NullFormatter

    sns.set_theme(style="whitegrid")
    labels = {
        "held_in": "held-in / expert",
        "held_out": "held-out / base",
        "held_in_multitask": "held-in / multitask",
        "held_out_multitask": "held-out / multitask",
    }

    methods = [
        name for name in ("average", "task_arithmetic", "dare", "ties") if name in set(summary["method"])
    ]
    orders = {
        "method": methods + sorted(set(summary["method"]) - set(methods)),
        "model": summary.sort_values("parameters")["model"].unique().tolist(),
        "n_experts": sorted(summary["n_experts"].unique()),
    }

    def plot(columns: list[str], x: str, col: str, style: str, ylabel: str):
        data = summary.melt(
            id_vars=CONFIG_KEYS + ["subset_seed"], value_vars=columns, var_name="tasks", value_name="score"
        ).dropna(subset=["score"])
        grid = sns.relplot(
            data=data.assign(tasks=data["tasks"].map(labels)),
            x=x,
            y="score",
            hue="method",
            style=style,
            row="tasks",
            col=col,
            col_order=orders[col],
            hue_order=orders["method"],
            kind="line",
            marker="o",
            errorbar="sd",
            err_style="bars",
            height=2.6,
            aspect=1.3,
            facet_kws={"sharey": "row"},
        )
        grid.set_titles("{row_name} | {col_var} {col_name}")
        grid.set(ylabel=ylabel)
        for axis in grid.axes.flat:
            axis.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        return grid

    sizes = sorted(summary["parameters"].unique())
    grid = plot(["held_in", "held_out"], "parameters", "n_experts", "base_kind", "normalized score")
    grid.set(xscale="log", xticks=sizes)
    for axis in grid.axes.flat:
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xticklabels([f"{value / 1e3:.0f}k" for value in sizes])
    for (label, _), axis in grid.axes_dict.items():
        group = next(name for name, text in labels.items() if text == label)
        for kind, line in (("it", "k-x"), ("base", "k--x")):
            own = baseline[baseline["base_kind"] == kind].sort_values("parameters")
            axis.plot(own["parameters"], own[group], line, linewidth=1.0)
    paths = [_save(grid, out_dir / "scale_vs_size.png", plt)]

    grid = plot(["held_in", "held_out"], "n_experts", "model", "base_kind", "normalized score")
    grid.set(xticks=sorted(summary["n_experts"].unique()))
    paths.append(_save(grid, out_dir / "scale_vs_experts.png", plt))

    grid = plot(
        ["held_in_multitask", "held_out_multitask"], "n_experts", "model", "base_kind", "merged / multitask"
    )
    grid.set(xticks=sorted(summary["n_experts"].unique()))
    paths.append(_save(grid, out_dir / "scale_vs_multitask.png", plt))
    return paths


def _save(grid, path: Path, plt) -> Path:
    grid.savefig(path, dpi=110)
    plt.close(grid.figure)
    return path
