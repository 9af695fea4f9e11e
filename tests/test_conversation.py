"""The conversation loop and the runner, with a scripted model (no weights needed)."""

import json

import pytest

from icpo_eval.errors import IcpoError
from icpo_eval.records import RunSpec
from icpo_eval.runner import run
from icpo_eval.store import read_conversations
from icpo_eval.tasksets import write_jsonl
from tests.conftest import make_math


def user_turns(msgs):
    return [m for m in msgs if m["role"] == "user"]


def spec_for(tmp_path, tasks_file, **kw):
    base = dict(
        model="scripted", tasks=str(tasks_file), modes=["sharded"], out=str(tmp_path / "run")
    )
    base.update(kw)
    return RunSpec(**base)


@pytest.fixture
def tasks_file(tmp_path):
    path = tmp_path / "tasks.jsonl"
    write_jsonl([make_math("t1"), make_math("t2", answer="9")], path)
    return path


def test_sharded_guesser_answers_early_and_is_flagged(tmp_path, tasks_file, scripted):
    # Always answers 8: right for t1, wrong for t2 (reference 9).
    backend = scripted(lambda msgs: "Tom has 3 + 5 = 8 apples.\nAnswer: 8")
    res = run(spec_for(tmp_path, tasks_file), backend=backend, progress=False)
    by_task = {c.task_id: c for c in res.conversations}
    t1, t2 = by_task["t1"], by_task["t2"]
    # t1: a correct (lucky) answer on turn 1 stops the conversation, premature or not.
    assert len(t1.assistant_turns) == 1
    first = t1.assistant_turns[0]
    assert (first.category, first.fully_specified, first.score, first.reward) == (
        "answer_attempt",
        False,
        1.0,
        0.0,
    )  # a guess on an underspecified turn earns 0
    assert t1.final_score == 1.0 and t1.first_answer_turn == 1
    # t2: wrong every time; goes on until every shard is out and answered (4 shards -> 4 turns).
    assert [t.fully_specified for t in t2.assistant_turns] == [False, False, True, True]
    assert [t.reward for t in t2.assistant_turns] == [0.0, 0.0, 0.0, 0.0]
    assert t2.final_score == 0.0 and t2.ever_correct is False
    # Rounds: one backend call per round, with every live conversation in it.
    if not hasattr(backend, "stream"):
        assert backend.calls == [2, 1, 1, 1]
    else:
        assert len(backend.calls) == 5  # 1 + 4 assistant turns, one request each


def test_asker_gets_the_shard_it_asks_for_then_answers(tmp_path, tasks_file, scripted):
    def reply(msgs):
        n = len(user_turns(msgs))
        if n == 1:
            return "How many apples did Tom buy at the market?"
        if n == 2:
            return "And how many apples does he start with?"
        return "He has 3 + 5 = 8 apples in total. The answer is 8."

    res = run(spec_for(tmp_path, tasks_file, limit=1), backend=scripted(reply), progress=False)
    (c,) = res.conversations
    users = [t for t in c.turns if t.role == "user"]
    assert [u.shards for u in users] == [[1], [3], [2]]
    assert [u.note for u in users] == ["next", "answered_question", "answered_question"]
    cats = [t.category for t in c.assistant_turns]
    assert cats == ["clarification", "clarification", "answer_attempt"]
    assert [t.reward for t in c.assistant_turns] == [1.0, 1.0, 1.0]
    assert c.final_score == 1.0 and c.first_answer_turn == 3


def test_max_turns_caps_a_model_that_never_answers(tmp_path, tasks_file, scripted):
    res = run(
        spec_for(tmp_path, tasks_file, max_turns=6, limit=1),
        backend=scripted(lambda m: "Could you tell me more?"),
        progress=False,
    )
    (c,) = res.conversations
    assert len(c.assistant_turns) == 6
    assert c.turns[-2].note == "no_more_shards"  # shards ran out, the user asks for an answer
    assert c.final_score == 0.0 and c.first_answer_turn is None


def test_full_and_concat_are_single_turn_fully_specified(tmp_path, tasks_file, scripted):
    seen = []

    def reply(msgs):
        seen.append(msgs[-1]["content"])
        return "Answer: 8"

    res = run(
        spec_for(tmp_path, tasks_file, modes=["full", "concat"], limit=1),
        backend=scripted(reply),
        progress=False,
    )
    assert {c.mode for c in res.conversations} == {"full", "concat"}
    for c in res.conversations:
        (t,) = c.assistant_turns
        assert t.fully_specified is True and t.score == 1.0 and t.reward == 1.0
    assert any(s.startswith("- How many apples") for s in seen)  # concat: a bullet list
    assert any(s.startswith("Tom starts with 3 apples") for s in seen)  # full: the question


def test_rerun_skips_finished_conversations(tmp_path, tasks_file, scripted):
    spec = spec_for(tmp_path, tasks_file, modes=["full"], runs=2)
    first = run(spec, backend=scripted(lambda m: "Answer: 8"), progress=False)
    assert first.written == 4
    again = scripted(lambda m: "Answer: 8")
    second = run(spec, backend=again, progress=False)
    assert (second.written, second.skipped, again.calls) == (0, 4, [])
    lines = (tmp_path / "run" / "conversations.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len({json.loads(x)["conversation_id"] for x in lines}) == 4


def test_system_prompt_comes_from_the_family_template(tmp_path, tasks_file, scripted):
    systems = []
    run(
        spec_for(tmp_path, tasks_file, modes=["full"], limit=1),
        backend=scripted(lambda m: systems.append(m[0]) or "Answer: 8"),
        progress=False,
    )
    assert systems[0]["role"] == "system" and "ask" in systems[0]["content"].lower()


def test_unknown_mode_is_a_user_error(tmp_path, tasks_file, scripted):
    with pytest.raises(IcpoError, match="unknown mode"):
        run(spec_for(tmp_path, tasks_file, modes=["sideways"]), backend=scripted(str))
    assert not (tmp_path / "run" / "conversations.jsonl").exists()


def test_conversations_file_is_readable_by_pandas(tmp_path, tasks_file, scripted):
    import pandas as pd

    run(spec_for(tmp_path, tasks_file), backend=scripted(lambda m: "Answer: 8"), progress=False)
    path = tmp_path / "run" / "conversations.jsonl"
    df = pd.read_json(path, lines=True)
    assert set(df.task_id) == {"t1", "t2"} and len(read_conversations(path)) == 2
