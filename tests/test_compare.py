"""Figures with intervals and paired differences (icpo_eval.compare), and the report's use."""

import pytest

from icpo_eval.cli import main
from icpo_eval.compare import (
    DEGRADATION,
    category_shares,
    formatted,
    interval_table,
    markdown,
)
from icpo_eval.errors import IcpoError
from icpo_eval.metrics import (
    mean_score,
    non_answer_share_by_progress,
    performance,
    turns_by_progress,
)
from icpo_eval.records import RunSpec, Turn
from icpo_eval.report import render
from icpo_eval.store import RunStore
from tests.conftest import make_conversation

NON_ANSWER = "non-answer rate, underspecified turns (%)"
PREMATURE = "premature-answer rate, underspecified turns (%)"
OVERCLAR = "over-clarification rate, fully specified turns (%)"


def a(category, fully):
    return Turn(1, "assistant", "x", category=category, fully_specified=fully)


def u(*shards):
    return Turn(0, "user", "x", shards=list(shards))


def conv(model, task, mode, score, turns):
    return make_conversation(
        conversation_id=f"{model}:{task}:{mode}:{score}:{len(turns)}",
        task_id=task,
        mode=mode,
        model=model,
        n_shards=2,
        turns=turns,
        final_score=score,
    )


def models(n=20, trained_tasks=None):
    """Base always guesses at once; "icpo" asks on the first turn of instructions 0..9 and
    answers right when fully specified on instructions 0..4 (base: 0..9)."""
    out = []
    for i in range(n):
        t = f"t{i}"
        out.append(conv("base", t, "full", float(i < 10), [u(1, 2), a("answer_attempt", True)]))
        guess = [u(1), a("answer_attempt", False), u(2), a("answer_attempt", True)]
        out.append(conv("base", t, "sharded", 0.0, guess))
        if trained_tasks is not None and i not in trained_tasks:
            continue
        first = "clarification" if i < 10 else "answer_attempt"
        out.append(conv("icpo", t, "full", float(i < 5), [u(1, 2), a("answer_attempt", True)]))
        out.append(
            conv("icpo", t, "sharded", 0.0, [u(1), a(first, False), u(2), a("discussion", True)])
        )
    return out


def find(estimates, mode, figure, model):
    hits = [e for e in estimates if (e.mode, e.figure, e.model) == (mode, figure, model)]
    assert len(hits) == 1, (mode, figure, model, hits)
    return hits[0]


def test_paired_differences_against_the_baseline():
    est = interval_table(models(), baseline="base", n_boot=300)
    base = find(est, "sharded", NON_ANSWER, "base")
    icpo = find(est, "sharded", NON_ANSWER, "icpo")
    assert (base.value, base.diff) == (0.0, None)
    assert icpo.value == 50.0 and icpo.diff == 50.0
    assert 20 < icpo.diff_lo < 50 < icpo.diff_hi < 80
    # Premature answers mirror it; P in full mode drops from 50 to 25 (paired).
    assert find(est, "sharded", PREMATURE, "icpo").diff == -50.0
    p = find(est, "full", "P", "icpo")
    assert (p.value, p.diff) == (25.0, -25.0) and p.diff_hi < 0
    # Over-clarification on the fully specified sharded turn: base never, icpo always.
    assert find(est, "sharded", OVERCLAR, "icpo").diff == 100.0
    # The baseline comes first in every cell; a figure undefined for everyone is left out.
    cells = [(e.mode, e.figure) for e in est]
    for cell in set(cells):
        rows = [e.model for e in est if (e.mode, e.figure) == cell]
        assert rows[0] == "base"
    assert ("full", PREMATURE) not in cells and ("full", NON_ANSWER) not in cells
    # Degradation: base P(sharded)/P(full) = 0/50; icpo the same, so a difference of 0.
    deg = find(est, "sharded/full", DEGRADATION, "icpo")
    assert deg.value == 0.0 and deg.diff == 0.0


def test_pairing_uses_only_the_instructions_every_model_ran():
    est = interval_table(models(trained_tasks=set(range(10))), baseline="base", n_boot=200)
    base = find(est, "full", "P", "base")
    # On instructions 0..9 the base solved all of them (100), not half (50, all 20).
    assert base.n_instructions == 10 and base.value == 100.0
    assert find(est, "full", "P", "icpo").diff == -50.0
    # Without a baseline every model keeps its own instructions and there is no difference.
    alone = interval_table(models(trained_tasks=set(range(10))), n_boot=50)
    assert find(alone, "full", "P", "base").value == 50.0
    assert all(e.diff is None for e in alone)


def test_tables_and_categories():
    est = interval_table(models(), baseline="base", n_boot=100)
    rows = formatted(est)
    row = next(r for r in rows if r["model"] == "icpo" and r["figure"] == NON_ANSWER)
    assert row["value (95% CI)"].startswith("50.0 [")
    assert row["difference from baseline (95% CI)"].startswith("+50.0 [")
    deg = next(r for r in rows if r["model"] == "icpo" and r["figure"] == DEGRADATION)
    assert deg["value (95% CI)"].startswith("0.00 [") and deg["instructions"] == "20"
    text = markdown(rows)
    assert text.count("\n") == len(rows) + 2 and text.startswith("| family | mode |")
    cats = {(r["model"], r["turns"]): r for r in category_shares(models())}
    under = cats[("icpo", "underspecified")]
    assert under["n"] == "20" and under["clarification"] == "50.0"
    assert under["answer_attempt"] == "50.0" and under["discussion"] == "0.0"
    assert cats[("base", "fully specified")]["n"] == "40"


def test_mean_score_is_p_and_progress_counts_turns():
    convs = models()
    for model in ("base", "icpo"):
        mine = [c for c in convs if c.model == model]
        assert mean_score(mine) == pytest.approx(performance(mine)["P"])
    assert mean_score([]) is None
    icpo = [c for c in convs if c.model == "icpo"]
    # Two shards, 5 buckets: the first turn sees 1/2 (bucket 2), the second 2/2 (bucket 4).
    assert turns_by_progress(icpo) == [0, 0, 20, 0, 20]
    assert non_answer_share_by_progress(icpo) == [None, None, 0.5, None, 1.0]


def write(directory, model, convs):
    store, _ = RunStore.open(directory, RunSpec(model=model, out=str(directory)))
    for c in convs:
        if c.model == model:
            store.append(c)
    store.close()


def test_report_shows_intervals_and_refuses_an_unknown_baseline(tmp_path, capsys):
    convs = models()
    write(tmp_path / "base", "base", convs)
    write(tmp_path / "icpo", "icpo", convs)
    html = render([tmp_path], baseline="base", n_boot=100)
    assert 'id="intervals"' in html and "paired against <code>base</code>" in html
    assert "+50.0 [" in html and 'id="categories"' in html
    assert 'id="intervals"' not in render([tmp_path], n_boot=0)
    with pytest.raises(IcpoError, match="baseline model 'nope'"):
        render([tmp_path], baseline="nope")
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path), "-o", str(out), "--baseline", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and not out.exists()
    assert main(["report", str(tmp_path), "-o", str(out), "--bootstrap", "-1"]) == 2


def test_number_words_audit():
    from icpo_eval.compare import strict_non_answer_rate
    from icpo_eval.judges import states_number_in_words

    assert states_number_in_words("Omar has two marbles.")
    assert states_number_in_words("I think so. Two dollars.")
    # A question, a digit, or no number word in the last sentence: not flagged.
    assert not states_number_in_words("Do you have two marbles?")
    assert not states_number_in_words("Omar has 2 marbles.")
    assert not states_number_in_words("Two marbles were mentioned. Which ones are his.")
    assert not states_number_in_words("Someone is asking.")  # "one" only as a whole word
    turns = [
        a("discussion", False),
        Turn(3, "assistant", "Omar has two.", category="discussion", fully_specified=False),
        a("answer_attempt", False),
    ]
    c = conv("m", "t", "sharded", 0.0, turns)
    assert strict_non_answer_rate([c]) == pytest.approx(1 / 3)
    assert strict_non_answer_rate([]) is None
