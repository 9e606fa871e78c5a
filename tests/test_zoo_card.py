"""Quality-gate arithmetic of the zoo card on hand-made scores (no models needed)."""

from __future__ import annotations

from mergelab.experiment.zoo_card import SizeScores, card_notes, gates, reference_table
from mergelab.zoo.suite import TaskSuite
from mergelab.zoo.tasks import TaskSpec


def tiny_suite() -> TaskSuite:
    tasks = {
        "a1": TaskSpec("a1", "a", "held_in", "classification", ["x", "y"], 0.5),
        "a2": TaskSpec("a2", "a", "held_in", "generation"),
        "b1": TaskSpec("b1", "b", "held_in", "classification", ["x", "y"], 0.5),
        "o1": TaskSpec("o1", "o", "held_out", "classification", ["x", "y", "z", "w"], 0.25),
        "p1": TaskSpec("p1", "p", "held_out", "classification", ["x", "y"], 0.5),
    }
    return TaskSuite(tasks)


def scores(size: str, val_loss: float, expert_b: float, it_out: float) -> SizeScores:
    flat = {"a1": 0.2, "a2": 0.0, "b1": 0.5, "o1": 0.25, "p1": 0.5}
    return SizeScores(
        size=size,
        parameters=1000,
        val_loss=val_loss,
        train_seconds=1.0,
        device="cpu",
        expert_own={"base": {"a": 0.95, "b": expert_b}, "it": {"a": 0.92, "b": 0.91}},
        models={
            "base/base": flat,
            "it/base": {**flat, "o1": it_out, "p1": 0.6},
            "base/average8": {**flat, "a1": 0.9, "a2": 0.9, "b1": 0.9},
        },
    )


def test_gates_pass_and_fail_on_the_measured_numbers():
    suite = tiny_suite()
    # expert b: 0.75 is below 0.9 but 0.25 over the best base on b (0.5): fails; it base on held-out:
    # mean(0.5, 0.6) = 0.55 > base mean(0.25, 0.5) = 0.375 and > chance mean(0.25, 0.5) = 0.375.
    results = {gate: (ok, text) for gate, ok, text in gates([scores("xs", 2.0, 0.75, 0.5)], suite)}
    expert_ok, expert_text = results["xs: every expert >= 0.9 on its category (or +0.30 over both bases)"]
    assert not expert_ok and expert_text == "failing: base/b 0.75"
    assert results["xs: it base beats base on held-out"] == (True, "it 0.550 vs base 0.375")
    # held-out standard error of it: categories o and p, one task each, weight 1/2, 200 examples:
    # sqrt((0.25 * 0.5 * 0.5 + 0.25 * 0.6 * 0.4) / 200) = sqrt(0.1225 / 200) = 0.02475; 0.175 > 0.0495
    assert results["xs: it base above chance on held-out by 2 standard errors"] == (
        True,
        "0.550 vs chance 0.375 (standard error 0.025)",
    )
    # the pretrained base sits exactly at chance (o1 0.25, p1 0.5): sqrt((0.25*0.1875 + 0.25*0.25)/200)
    assert results["xs: pretrained base above chance on held-out by 2 standard errors"] == (
        False,
        "0.375 vs chance 0.375 (standard error 0.023)",
    )
    # average8 held-in: category a mean 0.9, b 0.9 -> 0.9; experts (0.95 + 0.75) / 2 = 0.85 -> not below.
    assert results["xs: 8-expert average below the experts on held-in"] == (
        False,
        "average 0.900 vs experts 0.850",
    )


def test_expert_gate_accepts_thirty_points_over_base_and_loss_must_fall_along_the_ladder():
    suite = tiny_suite()
    ladder = [scores("xs", 2.0, 0.81, 0.5), scores("s", 2.1, 0.81, 0.5)]
    results = {gate: (ok, text) for gate, ok, text in gates(ladder, suite)}
    assert results["xs: every expert >= 0.9 on its category (or +0.30 over both bases)"][0]
    assert results["pretraining val loss falls along the ladder"] == (False, "xs 2.0000 > s 2.1000")


def test_expert_gate_covers_the_experts_of_every_replicate():
    suite = tiny_suite()
    size = scores("xs", 2.0, 0.95, 0.5)
    size.expert_own["it r1"] = {"a": 0.93, "b": 0.6}  # 0.6 is only +0.10 over the best base on b
    results = {gate: (ok, text) for gate, ok, text in gates([size], suite)}
    assert results["xs: every expert >= 0.9 on its category (or +0.30 over both bases)"] == (
        False,
        "failing: it r1/b 0.60",
    )


def test_reference_table_gives_each_held_out_score_its_interval_and_flags_near_chance():
    suite = tiny_suite()
    lines = reference_table([scores("xs", 2.0, 0.95, 0.5)], suite)
    rows = {
        line.split(" | ")[0].strip("| "): line
        for line in lines
        if line.startswith("| o1") or line.startswith("| p1")
    }
    # o1: base 0.25 at chance 0.25 -> near chance; it 0.5: standard error sqrt(0.25 / 200) = 0.0354,
    # interval 0.5 +- 0.069 = [0.43, 0.57], 0.25 over chance -> clear.
    assert rows["o1"] == "| o1 | 0.250 | 0.25 [0.19, 0.31] near chance | 0.50 [0.43, 0.57] |"
    # p1: it 0.6 vs chance 0.5: standard error sqrt(0.24 / 200) = 0.0346, 0.1 > 0.069 -> clear.
    assert rows["p1"] == "| p1 | 0.500 | 0.50 [0.43, 0.57] near chance | 0.60 [0.53, 0.67] |"


def test_a_rerendered_card_keeps_the_notes_of_the_card_it_replaces():
    card = "# Zoo card\n\n| gate | passed |\n|---|---|\n| xs - a | yes |\n\n## Notes\n\n- first note\n- second: `x`\n"
    assert card_notes(card) == ["first note", "second: `x`"]
    assert card_notes("# Zoo card\n\n- a list item outside the notes\n") == []
