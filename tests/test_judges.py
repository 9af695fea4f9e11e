"""The rule judge against hand-labelled replies, and the ICPO reward.

Two labelled sets (tests/data): `judge_labelled.jsonl` (development: the rules were tuned on
it) and `judge_holdout.jsonl` (written separately, not looked at while tuning). Run with
`pytest -s tests/test_judges.py` to see the per-class figures.
"""

import json
from collections import Counter
from pathlib import Path

import pytest

from icpo_eval.judges import rule_classify
from icpo_eval.records import CATEGORIES, NON_ANSWERS
from icpo_eval.reward import icpo_reward

DATA = Path(__file__).parent / "data"


def load(name: str) -> list[dict]:
    return [json.loads(x) for x in (DATA / name).read_text().splitlines() if x.strip()]


def report(name: str, items: list[dict]) -> tuple[float, float]:
    """Print per-class recall and return (binary accuracy, 7-class accuracy)."""
    preds = [rule_classify(it["response"], it["context"], it["context"]) for it in items]
    total, right = Counter(), Counter()
    for it, p in zip(items, preds):
        total[it["label"]] += 1
        right[it["label"]] += p == it["label"]
    binary = [
        (it["label"] == "answer_attempt") == (p == "answer_attempt")
        for it, p in zip(items, preds)
        if it["label"] != "missing"
    ]
    bin_acc = sum(binary) / len(binary)
    acc7 = sum(right.values()) / len(items)
    print(
        f"\n{name}: answer-vs-non-answer accuracy {bin_acc:.1%} (n={len(binary)}), "
        f"7-class accuracy {acc7:.1%} (n={len(items)})"
    )
    for c in CATEGORIES:
        if total[c]:
            print(f"  {c:<15} {right[c]:>3}/{total[c]:<3} {right[c] / total[c]:.0%}")
    confusions = Counter((it["label"], p) for it, p in zip(items, preds) if p != it["label"])
    for (gold, pred), n in confusions.most_common(6):
        print(f"  confused {gold} -> {pred}: {n}")
    return bin_acc, acc7


@pytest.mark.parametrize("name", ["judge_labelled.jsonl", "judge_holdout.jsonl"])
def test_labelled_sets_are_well_formed(name):
    items = load(name)
    counts = Counter(it["label"] for it in items)
    assert set(counts) <= set(CATEGORIES)
    assert len({it["id"] for it in items}) == len(items)
    if name == "judge_labelled.jsonl":
        assert len(items) >= 70
        assert all(counts[c] >= 10 for c in CATEGORIES if c != "missing")


@pytest.mark.parametrize("name", ["judge_labelled.jsonl", "judge_holdout.jsonl"])
def test_rule_judge_separates_answers_from_non_answers(name):
    bin_acc, acc7 = report(name, load(name))
    assert bin_acc >= 0.85
    assert acc7 >= 0.6


def test_empty_replies_are_missing():
    for text in ("", "   ", "\n\t"):
        assert rule_classify(text) == "missing"


@pytest.mark.parametrize(
    "text, category",
    [
        ("Tom has 3 + 5 = 8 apples.\nAnswer: 8", "answer_attempt"),
        ("How many apples does Tom start with?", "clarification"),
        ("How many does he start with? And how many does he buy?", "interrogation"),
        ("If he buys 5, he has 8; if he buys 6, he has 9.", "hedge"),
        ("I'm sorry, I can't solve this without more information.", "refuse"),
        ("To solve this we add what he starts with to what he buys.", "discussion"),
    ],
)
def test_one_clear_example_per_category(text, category):
    assert rule_classify(text) == category


def test_echoing_the_users_number_for_the_asked_quantity_is_an_answer():
    q = "How many brownies does Noah have now?"
    ctx = f"{q}\nNoah has 10 brownies."
    assert rule_classify("Noah has 10 brownies.", ctx, q) == "answer_attempt"
    assert (
        rule_classify(
            "Lena has $12 in her piggy bank.",
            "Lena has $12.",
            "How much money does Lena have left?",
        )
        == "answer_attempt"
    )
    # Restating a fact about something else is not an answer to the question.
    assert rule_classify("Noah bakes 2 trays.", ctx + "\nNoah bakes 2 trays.", q) == "discussion"
    q = "How many groups are there?"
    said = f"{q}\nThe class has 30 students.\nEach group has 6 students."
    assert rule_classify("Each group has 6 students.", said, q) == "discussion"
    assert rule_classify("There are 6 groups.", said, q) == "answer_attempt"


def test_icpo_reward():
    # Fully specified: the score of an answer; any non-answer or empty reply earns 0.
    assert icpo_reward(True, "answer_attempt", 1.0) == 1.0
    assert icpo_reward(True, "answer_attempt", 0.0) == 0.0
    assert icpo_reward(True, "clarification", None) == 0.0
    # Underspecified: 1 for every non-answer, 0 for a guess (even a lucky one) or nothing.
    for c in NON_ANSWERS:
        assert icpo_reward(False, c, None) == 1.0
    assert icpo_reward(False, "answer_attempt", 1.0) == 0.0
    assert icpo_reward(False, "missing", None) == 0.0
    # A reply cut off by the token limit is never rewarded as a non-answer.
    assert icpo_reward(False, "discussion", None, truncated=True) == 0.0
