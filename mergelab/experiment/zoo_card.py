"""Scores of a built zoo size and its quality gates, for the zoo card (results/zoo/README.md)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from transformers import AutoModelForCausalLM, AutoTokenizer

from mergelab.api.merging import load_merged_model, merge
from mergelab.eval import aggregate, evaluate_task
from mergelab.experiment.intervals import binomial_standard_error, near_chance
from mergelab.zoo.cache import read_manifest, zoo_home
from mergelab.zoo.ladder import BASE_KINDS, REPLICATES, model_path
from mergelab.zoo.suite import TaskSuite, load_suite, load_task


@dataclass
class SizeScores:
    size: str
    parameters: int
    val_loss: float
    train_seconds: float
    device: str
    # expert set (base kind, "<base kind> r<n>" for replicate n) -> category -> mean accuracy on own tasks
    expert_own: dict[str, dict[str, float]]
    models: dict[str, dict[str, float]]  # model label -> task -> score
    examples: int = 200  # test examples per task behind each score

    def group_mean(self, label: str, suite: TaskSuite, group: str) -> float:
        scores = {task: self.models[label][task] for task in suite.group(group)}
        return aggregate(scores, suite.category_of())


def score_model(model, tokenizer, tasks: list[str], suite: TaskSuite, max_examples: int) -> dict[str, float]:
    return {
        task: evaluate_task(
            model,
            tokenizer,
            load_task(task, "test"),
            suite.tasks[task].kind,
            max_examples=max_examples,
            batch_size=256,
        )
        for task in tasks
    }


def expert_set_label(base_kind: str, replicate: int = 0) -> str:
    """The card's name of one base kind's experts of one replicate ("base", "it r1")."""
    return f"{base_kind} r{replicate}" if replicate else base_kind


def built_replicates(size: str) -> list[int]:
    """The expert replicates beyond 0 whose sixteen experts are all built for `size`."""
    categories = load_suite().held_in_categories
    return [
        replicate
        for replicate in REPLICATES[1:]
        if all(
            read_manifest(model_path(size, kind, "expert", category, replicate=replicate)) is not None
            for kind in BASE_KINDS
            for category in categories
        )
    ]


def expert_own_scores(
    size: str, base_kind: str, replicate: int, tokenizer, suite: TaskSuite, max_examples: int
) -> dict[str, float]:
    """Each expert of one base kind and replicate on its own category's tasks (mean over the tasks)."""
    scores = {}
    for category in suite.held_in_categories:
        path = model_path(size, base_kind, "expert", category, replicate=replicate)
        own = score_model(
            AutoModelForCausalLM.from_pretrained(path),
            tokenizer,
            suite.tasks_in(category),
            suite,
            max_examples,
        )
        scores[category] = sum(own.values()) / len(own)
    return scores


def add_replicate_scores(size: str) -> None:
    """Score the experts of every built replicate > 0 into the scores an earlier `evaluate_size` saved."""
    path = zoo_home() / size / "scores.json"
    saved = json.loads(path.read_text())
    suite = load_suite()
    tokenizer = AutoTokenizer.from_pretrained(model_path(size, "base", "base"))
    for replicate in built_replicates(size):
        for base_kind in BASE_KINDS:
            saved["experts"][expert_set_label(base_kind, replicate)] = expert_own_scores(
                size, base_kind, replicate, tokenizer, suite, saved.get("examples", 200)
            )
    path.write_text(json.dumps(saved))


def evaluate_size(size: str, max_examples: int = 200) -> SizeScores:
    """Evaluate every component of a built size on the test splits, plus an 8-expert average per base."""
    suite = load_suite()
    tokenizer = AutoTokenizer.from_pretrained(model_path(size, "base", "base"))
    all_tasks = suite.group("held_in") + suite.group("held_out")
    models: dict[str, dict[str, float]] = {}
    expert_own: dict[str, dict[str, float]] = {}
    for base_kind in BASE_KINDS:
        for role in ("base", "multitask"):
            path = model_path(size, base_kind, role)
            models[f"{base_kind}/{role}"] = score_model(
                AutoModelForCausalLM.from_pretrained(path), tokenizer, all_tasks, suite, max_examples
            )
        expert_paths = [model_path(size, base_kind, "expert", c) for c in suite.held_in_categories]
        for replicate in [0, *built_replicates(size)]:
            expert_own[expert_set_label(base_kind, replicate)] = expert_own_scores(
                size, base_kind, replicate, tokenizer, suite, max_examples
            )
        base_path = model_path(size, base_kind, "base")
        merged = load_merged_model(base_path, merge(base_path, expert_paths, "average", progress=False))
        models[f"{base_kind}/average8"] = score_model(merged, tokenizer, all_tasks, suite, max_examples)
    scores = _with_manifest_facts(size, expert_own, models, max_examples)
    summary = {
        "expert_held_in": _mean(expert_own["base"].values()),
        "it_held_out": scores.group_mean("it/base", suite, "held_out"),
    }
    (zoo_home() / size / "scores.json").write_text(
        json.dumps(summary | {"models": models, "experts": expert_own, "examples": max_examples})
    )
    return scores


def _with_manifest_facts(size: str, expert_own: dict, models: dict, examples: int) -> SizeScores:
    """SizeScores with parameters, loss, training seconds and device read from the component manifests."""
    suite = load_suite()
    paths = [model_path(size, kind, role) for kind in BASE_KINDS for role in ("base", "multitask")]
    paths += [model_path(size, kind, "expert", c) for kind in BASE_KINDS for c in suite.held_in_categories]
    seconds = sum(read_manifest(path)["seconds"] for path in paths)
    base_manifest = read_manifest(model_path(size, "base", "base"))
    return SizeScores(
        size,
        base_manifest["parameters"],
        base_manifest["val_loss"],
        seconds,
        base_manifest["device"],
        expert_own,
        models,
        examples,
    )


def load_size_scores(size: str) -> SizeScores:
    """The scores `evaluate_size` saved for a size (so the card can be re-rendered without evaluating)."""
    saved = json.loads((zoo_home() / size / "scores.json").read_text())
    return _with_manifest_facts(size, saved["experts"], saved["models"], saved.get("examples", 200))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def held_out_standard_error(task_scores: dict[str, float], suite: TaskSuite, examples: int) -> float:
    """Binomial standard error of the held-out aggregate (mean over categories of the mean over their
    tasks) with `examples` independent test examples per task: sqrt(sum_t w_t^2 p_t (1 - p_t) / n), where
    w_t is the task's weight in the aggregate, 1 / (categories x tasks in its category). Examples that share an
    entity are not independent, so this is a floor; the study reports' bootstrap clusters by entity."""
    categories = suite.held_out_categories
    variance = 0.0
    for category in categories:
        tasks = suite.tasks_in(category)
        for task in tasks:
            weight = 1 / (len(categories) * len(tasks))
            variance += weight**2 * task_scores[task] * (1 - task_scores[task]) / examples
    return math.sqrt(variance)


def gates(ladder: list[SizeScores], suite: TaskSuite) -> list[tuple[str, bool, str]]:
    """The zoo's quality gates as (gate, passed, measured numbers)."""
    results = []
    for scores in ladder:
        worst = []
        for expert_set, own_scores in scores.expert_own.items():
            for category, own in own_scores.items():
                best_base = max(
                    _mean(scores.models[f"{k}/base"][t] for t in suite.tasks_in(category)) for k in BASE_KINDS
                )
                worst.append((own >= 0.9 or own - best_base >= 0.3, f"{expert_set}/{category} {own:.2f}"))
        failed = [text for ok, text in worst if not ok]
        results.append(
            (
                f"{scores.size}: every expert >= 0.9 on its category (or +0.30 over both bases)",
                not failed,
                "failing: " + ", ".join(failed) if failed else "all pass",
            )
        )
        base_out = scores.group_mean("base/base", suite, "held_out")
        it_out = scores.group_mean("it/base", suite, "held_out")
        results.append(
            (
                f"{scores.size}: it base beats base on held-out",
                it_out > base_out,
                f"it {it_out:.3f} vs base {base_out:.3f}",
            )
        )
        chance = aggregate({t: suite.tasks[t].chance for t in suite.group("held_out")}, suite.category_of())
        for base_kind, name, score in (("base", "pretrained base", base_out), ("it", "it base", it_out)):
            error = held_out_standard_error(scores.models[f"{base_kind}/base"], suite, scores.examples)
            results.append(
                (
                    f"{scores.size}: {name} above chance on held-out by 2 standard errors",
                    score - chance > 2 * error,
                    f"{score:.3f} vs chance {chance:.3f} (standard error {error:.3f})",
                )
            )
        expert_in = _mean(scores.expert_own["base"].values())
        average_in = scores.group_mean("base/average8", suite, "held_in")
        results.append(
            (
                f"{scores.size}: 8-expert average below the experts on held-in",
                average_in < expert_in,
                f"average {average_in:.3f} vs experts {expert_in:.3f}",
            )
        )
    losses = [s.val_loss for s in ladder]
    results.append(
        (
            "pretraining val loss falls along the ladder",
            len(losses) >= 2 and all(a > b for a, b in zip(losses, losses[1:])),
            " > ".join(f"{s.size} {s.val_loss:.4f}" for s in ladder)
            + (" (needs 2 sizes)" if len(losses) < 2 else ""),
        )
    )
    return results


def reference_table(ladder: list[SizeScores], suite: TaskSuite) -> list[str]:
    """Markdown lines: each held-out task's zero-shot score for both bases of every size with its 95%
    interval (binomial, over the test examples), marked `near chance` where it is within 2 standard errors
    of chance or below it: such a task cannot tell a merge that keeps the base's ability from one that
    loses it."""
    columns = [(s, kind) for s in ladder for kind in BASE_KINDS]
    lines = [
        "",
        "## Held-out references against chance",
        "",
        "Zero-shot test score of each base on each held-out task, with its 95% interval (binomial over the "
        "test examples; `near chance`: within 2 standard errors of chance or below it).",
        "",
        "| task | chance | " + " | ".join(f"{s.size} {kind}" for s, kind in columns) + " |",
        "|---|---:|" + "---|" * len(columns),
    ]
    for task in suite.group("held_out"):
        chance = suite.tasks[task].chance
        cells = []
        for s, kind in columns:
            score = s.models[f"{kind}/base"][task]
            error = binomial_standard_error(score, s.examples)
            cell = f"{score:.2f} [{max(0.0, score - 1.96 * error):.2f}, {min(1.0, score + 1.96 * error):.2f}]"
            cells.append(cell + (" near chance" if near_chance(score, chance, error) else ""))
        lines.append(f"| {task} | {chance:.3f} | " + " | ".join(cells) + " |")
    return lines


def card_notes(card: str) -> list[str]:
    """The bullets of a rendered card's Notes section (hand-written findings that a re-render keeps)."""
    _, found, notes = card.partition("\n## Notes\n")
    if not found:
        return []
    return [line[2:] for line in notes.splitlines() if line.startswith("- ")]


def render_card(ladder: list[SizeScores], notes: list[str] | None = None) -> str:
    """The zoo card markdown: summary per size, experts per category, held-out references against chance,
    chance levels, gates, notes."""
    suite = load_suite()
    lines = [
        "# Zoo card",
        "",
        "Regenerate with `bash scripts/build_ladder.sh` (every size, both expert replicates), or `mergelab zoo "
        "build size=xs` then `python scripts/zoo_card.py --sizes xs` (add sizes as they are built).",
        "Scores are test-split accuracy (rank classification) or exact match (generation), averaged within a",
        "category, then across categories; 200 examples per task.",
        "",
        "| size | parameters | pretrain val loss | train s | device | experts on own category (base / it) |"
        " base held-in | base held-out | it held-in | it held-out | multitask held-in (base / it) |"
        " multitask held-out (base / it) | 8-expert average held-in (base / it) |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for s in ladder:

        def g(label: str, group: str, s: SizeScores = s) -> str:
            return f"{s.group_mean(label, suite, group):.3f}"

        lines.append(
            f"| {s.size} | {s.parameters:,} | {s.val_loss:.4f} | {s.train_seconds:.0f} | {s.device} | "
            f"{_mean(s.expert_own['base'].values()):.3f} / {_mean(s.expert_own['it'].values()):.3f} | "
            f"{g('base/base', 'held_in')} | {g('base/base', 'held_out')} | {g('it/base', 'held_in')} | "
            f"{g('it/base', 'held_out')} | {g('base/multitask', 'held_in')} / {g('it/multitask', 'held_in')} | "
            f"{g('base/multitask', 'held_out')} / {g('it/multitask', 'held_out')} | "
            f"{g('base/average8', 'held_in')} / {g('it/average8', 'held_in')} |"
        )
    lines += [
        "",
        "## Experts on their own category",
        "",
        "Expert sets: the experts of each base kind, and of each independently fine-tuned replicate of them "
        "(`r1`: `mergelab zoo build size=NAME replicate=1`, another seed from the same base).",
        "",
        "| size | experts | " + " | ".join(suite.held_in_categories) + " |",
        "|---|---|" + "---:|" * len(suite.held_in_categories),
    ]
    for s in ladder:
        for expert_set, own_scores in s.expert_own.items():
            lines.append(
                f"| {s.size} | {expert_set} | "
                + " | ".join(f"{own_scores[c]:.2f}" for c in suite.held_in_categories)
                + " |"
            )
    lines += reference_table(ladder, suite)
    lines += ["", "## Chance levels", "", "| task | group | category | chance |", "|---|---|---|---:|"]
    for name, spec in suite.tasks.items():
        if spec.group != "instruction":
            lines.append(f"| {name} | {spec.group} | {spec.category} | {spec.chance:.3f} |")
    lines += ["", "## Quality gates", "", "| gate | passed | measured |", "|---|---|---|"]
    lines += [f"| {gate} | {'yes' if ok else 'NO'} | {text} |" for gate, ok, text in gates(ladder, suite)]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
