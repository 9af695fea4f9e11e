"""The recap and snowball modes (DESIGN.md, Modes), with a scripted model, both schedules."""

from __future__ import annotations

import pytest

from icpo_eval.conversation import RECAP_INTRO, SNOWBALL_INTRO
from icpo_eval.leaderboard import build, summary_table
from icpo_eval.records import MODES, RunSpec
from icpo_eval.runner import run
from icpo_eval.tasksets import write_jsonl
from tests.conftest import make_math


@pytest.fixture
def tasks_file(tmp_path):
    path = tmp_path / "tasks.jsonl"
    write_jsonl([make_math("t1"), make_math("t2", answer="9")], path)
    return path


def spec_for(tmp_path, tasks_file, modes, **kw):
    return RunSpec(
        model="scripted", tasks=str(tasks_file), modes=modes, out=str(tmp_path / "run"), **kw
    )


def users(c):
    return [t for t in c.turns if t.role == "user"]


def test_modes_are_known():
    assert {"recap", "snowball"} <= set(MODES)


def test_recap_adds_one_turn_restating_everything(tmp_path, tasks_file, scripted):
    backend = scripted(lambda msgs: "Tom has 3 + 5 = 8 apples.\nAnswer: 8")
    res = run(spec_for(tmp_path, tasks_file, ["recap"]), backend=backend, progress=False)
    by_task = {c.task_id: c for c in res.conversations}
    t1, t2 = by_task["t1"], by_task["t2"]
    # t1: the sharded part stops at the (lucky) correct answer on turn 1; then the recap.
    assert len(t1.assistant_turns) == 2
    recap = users(t1)[-1]
    assert recap.content.startswith(RECAP_INTRO) and recap.note == "recap"
    assert recap.shards == [1, 2, 3, 4]
    assert all(f"- {s.shard}" in recap.content for s in make_math().shards)
    last = t1.assistant_turns[-1]
    assert last.fully_specified is True and last.score == 1.0 and t1.final_score == 1.0
    # t2: wrong every time: 4 sharded turns (all shards out and answered), then the recap.
    assert len(t2.assistant_turns) == 5 and t2.final_score == 0.0
    assert users(t2)[-1].note == "recap" and users(t2)[-2].note == "next"


def test_recap_comes_on_top_of_max_turns(tmp_path, tasks_file, scripted):
    res = run(
        spec_for(tmp_path, tasks_file, ["recap"], max_turns=2, limit=1),
        backend=scripted(lambda m: "Could you tell me more?"),
        progress=False,
    )
    (c,) = res.conversations
    assert len(c.assistant_turns) == 3 and users(c)[-1].note == "recap"
    assert c.assistant_turns[-1].fully_specified is True


def test_snowball_restates_earlier_shards_each_turn(tmp_path, tasks_file, scripted):
    seen = []

    def reply(msgs):
        seen.append(msgs[-1]["content"])
        return "Let me think about it."

    res = run(
        spec_for(tmp_path, tasks_file, ["snowball"], limit=1), backend=scripted(reply),
        progress=False,
    )  # fmt: skip
    (c,) = res.conversations
    us = users(c)
    inst = make_math()
    assert us[0].content == inst.shards[0].shard  # nothing to restate yet
    for k, u in enumerate(us[1:4], start=1):
        assert u.content.startswith(SNOWBALL_INTRO)
        earlier = [s.shard for s in inst.shards[:k]]
        assert all(f"- {s}" in u.content for s in earlier)
        assert u.content.endswith(inst.shards[k].shard)
        assert u.shards == [inst.shards[k].shard_id]  # only the new shard counts as revealed
    assert [t.fully_specified for t in c.assistant_turns][:4] == [False, False, True, True]


def test_snowball_stops_like_sharded(tmp_path, tasks_file, scripted):
    res = run(
        spec_for(tmp_path, tasks_file, ["snowball", "sharded"], limit=1),
        backend=scripted(lambda m: "Answer: 8"),
        progress=False,
    )
    for c in res.conversations:
        assert len(c.assistant_turns) == 1 and c.final_score == 1.0


def test_metrics_and_leaderboard_group_the_new_modes(tmp_path, tasks_file, scripted):
    modes = ["full", "sharded", "recap", "snowball"]
    res = run(
        spec_for(tmp_path, tasks_file, modes), backend=scripted(lambda m: "Answer: 8"),
        progress=False,
    )  # fmt: skip
    table = summary_table(res.conversations)
    assert "recap" in table and "snowball" in table
    df = build([tmp_path / "run"])
    math_rows = df[df.family == "math"]
    assert set(math_rows["mode"]) == set(modes)
    recap = math_rows[math_rows["mode"] == "recap"].iloc[0]
    assert recap["P"] == 50.0 and recap["n_conversations"] == 2
