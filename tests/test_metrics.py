import pytest

from icpo_eval.metrics import (
    over_clarification_rate,
    performance,
    premature_answer_rate,
    summary_row,
)
from icpo_eval.records import Conversation, Turn


def conv(task, score, turns=(), error=None):
    return Conversation(
        conversation_id=f"{task}-{score}-{len(turns)}-{error}",
        run_id="r",
        task_id=task,
        family="math",
        mode="sharded",
        model="m",
        simulator="rule",
        judge="rule",
        seed=0,
        run_index=0,
        turns=list(turns),
        final_score=None if error else score,
        error=error,
    )


def a(category, fully):
    return Turn(0, "assistant", "x", category=category, fully_specified=fully)


def test_performance_by_hand():
    # Instruction A: runs 1, 0, 1, 1 -> scores 100, 0, 100, 100.
    #   mean 75; numpy linear percentiles of [0,100,100,100]: p90 = 100, p10 = 30 -> U = 70.
    # Instruction B: one run scoring 0 -> P 0, A90 0, U 0.
    convs = [conv("A", s) for s in (1.0, 0.0, 1.0, 1.0)] + [conv("B", 0.0)]
    perf = performance(convs)
    assert perf["P"] == pytest.approx((75 + 0) / 2)
    assert perf["A90"] == pytest.approx((100 + 0) / 2)
    assert perf["U90_10"] == pytest.approx((70 + 0) / 2)


def test_failed_conversations_are_left_out_not_zero():
    convs = [conv("A", 1.0), conv("A", None, error="timeout")]
    assert performance(convs)["P"] == 100.0
    row = summary_row(convs)
    assert row["failed"] == 1 and row["n_conversations"] == 1


def test_single_run_has_no_spread():
    perf = performance([conv("A", 1.0)])
    assert (perf["P"], perf["A90"], perf["U90_10"]) == (100.0, 100.0, 0.0)


def test_nothing_scored_gives_none():
    assert performance([])["P"] is None
    assert premature_answer_rate([]) is None


def test_turn_rates_by_hand():
    c1 = conv(
        "A", 0.0, [a("answer_attempt", False), a("clarification", False), a("answer_attempt", True)]
    )
    c2 = conv("B", 0.0, [a("discussion", False), a("hedge", True), a("missing", True)])
    # Underspecified turns: answer, clarification, discussion -> 1 of 3 premature.
    assert premature_answer_rate([c1, c2]) == pytest.approx(1 / 3)
    # Fully specified turns: answer, hedge, missing -> 1 non-answer (hedge) of 3.
    assert over_clarification_rate([c1, c2]) == pytest.approx(1 / 3)
