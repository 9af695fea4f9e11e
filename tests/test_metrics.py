import pytest

from icpo_eval.metrics import (
    bootstrap_ci,
    degradation,
    degradations,
    mean_first_answer_turn,
    mean_icpo_reward,
    non_answer_rate,
    non_answer_share_by_progress,
    over_clarification_rate,
    pass_hat_k,
    performance,
    premature_answer_rate,
    summary_row,
)
from icpo_eval.records import Turn
from tests.conftest import make_conversation


def conv(task, score, turns=(), error=None, mode="sharded", first=None):
    return make_conversation(
        conversation_id=f"{task}-{score}-{len(turns)}-{error}",
        task_id=task,
        mode=mode,
        turns=list(turns),
        final_score=None if error else score,
        error=error,
        first_answer_turn=first,
    )


def a(category, fully, reward=None):
    return Turn(0, "assistant", "x", category=category, fully_specified=fully, reward=reward)


def u(*shards):
    return Turn(0, "user", "x", shards=list(shards))


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


# -- pass^k ---------------------------------------------------------------------------------


def test_pass_hat_k_by_hand():
    convs = (
        [conv("A", s) for s in (1.0, 1.0, 1.0, 0.0)]  # n=4, c=3
        + [conv("B", 1.0), conv("B", 0.5)]  # n=2, c=1: a partial score is not a success
        + [conv("C", 1.0)]  # n=1, c=1
        + [conv("D", 1.0), conv("D", None, error="timeout")]  # failed run not counted: n=1, c=1
    )
    # k=1: A 3/4, B 1/2, C 1/1, D 1/1 -> (0.75 + 0.5 + 1 + 1) / 4 = 0.8125
    assert pass_hat_k(convs, 1) == pytest.approx(0.8125)
    # k=2: A C(3,2)/C(4,2) = 3/6 = 0.5; B C(1,2)/C(2,2) = 0/1 = 0; C, D skipped (n=1 < 2)
    #   -> (0.5 + 0) / 2 = 0.25
    assert pass_hat_k(convs, 2) == pytest.approx(0.25)
    # k=4: only A qualifies: C(3,4)/C(4,4) = 0/1 = 0.0 (a real zero, not None)
    assert pass_hat_k(convs, 4) == 0.0
    # k=5: no instruction has 5 scored runs -> None
    assert pass_hat_k(convs, 5) is None


def test_pass_hat_k_single_run_and_no_answer():
    # One run: pass^1 is the run's success, 1 -> 1.0
    assert pass_hat_k([conv("A", 1.0)], 1) == 1.0
    # A finished conversation that never answered has final_score 0: C(0,1)/C(1,1) = 0
    assert pass_hat_k([conv("A", 0.0)], 1) == 0.0
    # Fewer runs than k (1 < 2) -> skipped -> nothing qualifies
    assert pass_hat_k([conv("A", 1.0)], 2) is None


def test_pass_hat_k_empty_and_failed_only():
    assert pass_hat_k([], 1) is None
    assert pass_hat_k([conv("A", None, error="boom")], 1) is None
    with pytest.raises(ValueError):
        pass_hat_k([conv("A", 1.0)], 0)


# -- degradation ----------------------------------------------------------------------------


def test_degradation_by_hand():
    convs = (
        # full: A runs 1, 1 -> 100; B run 0 -> 0; P = (100 + 0) / 2 = 50
        [conv("A", 1.0, mode="full"), conv("A", 1.0, mode="full"), conv("B", 0.0, mode="full")]
        # sharded: A runs 1, 0 -> 50; B 0 -> 0; P = (50 + 0) / 2 = 25 (failed run left out)
        + [conv("A", 1.0), conv("A", 0.0), conv("B", 0.0), conv("B", None, error="x")]
        # concat: A 1 -> 100; B 1 -> 100; P = 100
        + [conv("A", 1.0, mode="concat"), conv("B", 1.0, mode="concat")]
    )
    assert degradation(convs) == pytest.approx(25 / 50)  # 0.5
    assert degradation(convs, "concat") == pytest.approx(100 / 50)  # 2.0
    assert degradations(convs) == {
        "sharded/full": pytest.approx(0.5),
        "concat/full": pytest.approx(2.0),
    }


def test_degradation_none_cases():
    sharded = [conv("A", 1.0)]
    # No reference conversations at all -> None
    assert degradation(sharded) is None
    # P(full) = 0 (the only full run never answered) -> None rather than a division by zero
    assert degradation(sharded + [conv("A", 0.0, mode="full")]) is None
    # Only a failed sharded conversation -> nothing scored on that side -> None
    assert degradation([conv("A", None, error="x"), conv("A", 1.0, mode="full")]) is None
    # Sharded P = 0 against full P = 100 is a real 0.0, not None
    assert degradation([conv("A", 0.0), conv("A", 1.0, mode="full")]) == 0.0
    assert degradations([]) == {"sharded/full": None, "concat/full": None}


# -- non-answer share by progress -----------------------------------------------------------


def test_non_answer_share_by_progress_bucket_edges():
    # Task T has 5 shards; the full-mode conversation's single user turn lists them all -> total 5.
    full = conv("T", 1.0, [u(1, 2, 3, 4, 5), a("answer_attempt", True)], mode="full")
    c1 = conv(
        "T",
        0.0,
        [
            u(1), a("clarification", False),  # 1/5 = 0.2 -> bucket 0, (0, 0.2]
            u(2), a("answer_attempt", False),  # 2/5 = 0.4 -> bucket 1, (0.2, 0.4]
            u(3), a("hedge", False),  # 3/5 = 0.6 -> bucket 2
            u(4), a("missing", False),  # 4/5 = 0.8 -> bucket 3 (missing is not a non-answer)
            u(5), a("answer_attempt", True),  # 5/5 = 1.0 -> bucket 4
        ],
    )  # fmt: skip
    c2 = conv("T", 1.0, [u(1), a("answer_attempt", False), u(2), a("interrogation", False)])
    # bucket 0: clarification, answer -> 1/2; bucket 1: answer, interrogation -> 1/2;
    # bucket 2: hedge -> 1/1; bucket 3: missing -> 0/1; bucket 4: answer -> 0/1.
    # The full conversation's own turn is not counted (not sharded).
    assert non_answer_share_by_progress([full, c1, c2]) == [0.5, 0.5, 1.0, 0.0, 0.0]


def test_non_answer_share_by_progress_shard_total():
    c = conv("T", 1.0, [u(1), a("clarification", False), u(2), a("answer_attempt", True)])
    # Alone, the total is what was revealed: 2 shards. 1/2 = 0.5 -> bucket 2 (0.4, 0.6];
    # 2/2 = 1.0 -> bucket 4.
    assert non_answer_share_by_progress([c]) == [None, None, 1.0, None, 0.0]
    # Another sharded run of T revealed shard 3 and 4 too -> total 4 for both runs (its own
    # turns: 1/4 -> bucket 1 discussion, 4/4 -> bucket 4 answer).
    other = conv("T", 0.0, [u(1), a("discussion", False), u(2, 3, 4), a("answer_attempt", True)])
    # c: 1/4 = 0.25 -> bucket 1 (clarification); 2/4 = 0.5 -> bucket 2 (answer).
    # bucket 1: clarification, discussion -> 1; bucket 2: answer -> 0; bucket 4: answer -> 0.
    assert non_answer_share_by_progress([c, other]) == [None, 1.0, 0.0, None, 0.0]
    # shard_counts overrides: 10 shards -> 1/10 = 0.1 and 2/10 = 0.2 both in bucket 0 -> 1/2.
    assert non_answer_share_by_progress([c], shard_counts={"T": 10}) == [0.5, *[None] * 4]


def test_non_answer_share_by_progress_zero_failed_and_empty():
    # An assistant turn before any shard is revealed: progress 0 -> bucket 0.
    c = conv("T", 0.0, [u(), a("refuse", False), u(1), a("answer_attempt", True)])
    # 0/1 = 0 -> bucket 0 (refuse, non-answer); 1/1 = 1.0 -> bucket 1 of 2 (answer).
    # A failed run and a concat run of T are left out of the shares.
    failed = conv("T", None, [u(1), a("answer_attempt", True)], error="x")
    concat = conv("T", 1.0, [u(1), a("hedge", True)], mode="concat")
    assert non_answer_share_by_progress([c, failed, concat], buckets=2) == [1.0, 0.0]
    # Progress 0.5 with 2 buckets sits on the edge -> bucket 0, (0, 0.5].
    half = conv("T", 0.0, [u(1), a("hedge", False)])
    assert non_answer_share_by_progress([half], 2, {"T": 2}) == [1.0, None]
    assert non_answer_share_by_progress([]) == [None] * 5


# -- first answer turn, reward, summary -----------------------------------------------------


def test_mean_first_answer_turn_by_hand():
    convs = [
        conv("A", 1.0, first=1),
        conv("B", 0.0, first=3),
        conv("C", 0.0, first=None),  # finished, never answered
        conv("D", None, error="x", first=2),  # failed: left out
    ]
    # answered: 1 and 3 -> mean 2.0; one never answered
    assert mean_first_answer_turn(convs) == {"mean": 2.0, "n_answered": 2, "n_never": 1}
    assert mean_first_answer_turn([conv("C", 0.0)]) == {"mean": None, "n_answered": 0, "n_never": 1}
    assert mean_first_answer_turn([]) == {"mean": None, "n_answered": 0, "n_never": 0}


def test_mean_icpo_reward_by_hand():
    c1 = conv("A", 1.0, [a("clarification", False, 1.0), a("answer_attempt", False, 0.0)])
    c2 = conv(
        "B",
        0.5,
        [
            a("answer_attempt", True, 1.0),
            a("answer_attempt", True, 0.5),
            a("missing", False, None),  # no reward: skipped
            a("hedge", None, 1.0),  # unknown specification: counted in "all" only
        ],
    )
    failed = conv("C", None, [a("clarification", False, 1.0)], error="x")  # left out
    # all: 1 + 0 + 1 + 0.5 + 1 = 3.5 over 5 -> 0.7
    # fully specified: 1 + 0.5 over 2 -> 0.75; underspecified: 1 + 0 over 2 -> 0.5
    assert mean_icpo_reward([c1, c2, failed]) == {
        "all": pytest.approx(0.7),
        "fully_specified": pytest.approx(0.75),
        "underspecified": pytest.approx(0.5),
    }
    # Only underspecified turns -> the fully specified group is empty -> None
    assert mean_icpo_reward([c1]) == {
        "all": pytest.approx(0.5),
        "fully_specified": None,
        "underspecified": pytest.approx(0.5),
    }
    assert mean_icpo_reward([]) == {"all": None, "fully_specified": None, "underspecified": None}


def test_summary_row_figures_all_reach_the_leaderboard():
    from icpo_eval.leaderboard import COLUMNS

    c1 = conv("A", 1.0, [a("answer_attempt", True, 1.0)], first=1)
    c2 = conv("A", 0.0, [a("clarification", False, 1.0), a("answer_attempt", True, 0.0)], first=2)
    row = summary_row([c1, c2, conv("A", None, error="x")])
    assert set(row) <= set(COLUMNS)
    assert row["mean_first_answer_turn"] == pytest.approx(1.5)  # (1 + 2) / 2
    assert row["mean_reward"] == pytest.approx(2 / 3)  # (1 + 1 + 0) / 3
    assert row["failed"] == 1
    empty = summary_row([])
    assert empty["mean_first_answer_turn"] is None and empty["mean_reward"] is None


def test_progress_uses_the_recorded_shard_count():
    # One sharded conversation of a 4-shard instruction that stopped after 2 shards: the record's
    # n_shards (4) is the total, not the 2 shards it revealed. Turn 1 sees 1/4 = 0.25 (bucket 1),
    # turn 2 sees 2/4 = 0.5 (bucket 2) -> [None, 1.0, 0.0, None, None].
    turns = [
        Turn(0, "user", "q", shards=[1]),
        Turn(1, "assistant", "?", category="clarification", fully_specified=False),
        Turn(2, "user", "x", shards=[2]),
        Turn(3, "assistant", "8", category="answer_attempt", fully_specified=False),
    ]
    c = conv("A", 1.0, turns)
    c.n_shards = 4
    assert non_answer_share_by_progress([c]) == [None, 1.0, 0.0, None, None]


def test_non_answer_rate_counts_non_answers_among_underspecified_turns():
    c = conv("A", 0.0, [a("clarification", False), a("missing", False), a("answer_attempt", False)])
    d = conv("B", 1.0, [a("hedge", False), a("discussion", True), a("answer_attempt", True)])
    assert non_answer_rate([c, d]) == pytest.approx(2 / 4)  # missing is not a non-answer
    assert premature_answer_rate([c, d]) == pytest.approx(1 / 4)
    assert non_answer_rate([conv("C", 1.0, [a("answer_attempt", True)])]) is None


def test_bootstrap_ci_resamples_instructions_and_pairs_the_difference():
    # Base never asks; the trained model asks on every underspecified turn of instructions
    # 0..9 and never on 10..19. The paired difference is 0.5 and its interval covers it.
    base = [conv(f"t{i}", 0.0, [a("answer_attempt", False)] * 2) for i in range(20)]
    asks = [
        conv(f"t{i}", 0.0, [a("clarification" if i < 10 else "answer_attempt", False)] * 2)
        for i in range(20)
    ]
    ci = bootstrap_ci([base, asks], non_answer_rate, n_boot=400, seed=1)
    assert ci["0"] == (0.0, 0.0, 0.0)
    point, lo, hi = ci["1"]
    assert point == 0.5 and 0.2 < lo < 0.5 < hi < 0.8
    assert ci["1-0"][0] == 0.5 and ci["1-0"][1] == pytest.approx(lo) and ci["1-0"][2] == hi
    # Same seed, same interval; a statistic undefined everywhere gives None.
    assert bootstrap_ci([base, asks], non_answer_rate, n_boot=400, seed=1) == ci
    none = bootstrap_ci([[conv("x", 1.0, [a("answer_attempt", True)])]], non_answer_rate, 50)
    assert none["0"] == (None, None, None)


def test_bootstrap_counts_an_instruction_drawn_twice_twice():
    # Ten instructions, one solved: P's resampled value is (times the solved one is drawn)/10,
    # so its upper 97.5% bound reaches 30. Merging repeated draws of one instruction (P groups
    # by task_id) would cap it near 1/(distinct instructions drawn), about 15.
    convs = [conv(f"t{i}", 1.0 if i == 0 else 0.0, mode="full") for i in range(10)]
    point, lo, hi = bootstrap_ci([convs], lambda cs: performance(cs)["P"], 2000, seed=0)["0"]
    assert point == 10.0 and lo == 0.0 and hi >= 30.0
