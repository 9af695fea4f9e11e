"""``icpo-eval rejudge``: stored runs judged again, trajectories kept, versions recorded, and the
leaderboard refusing to merge runs judged by different versions."""
# ruff: noqa: F811 -- pytest fixtures are imported from tests/fake_api.py

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from icpo_eval.cli import main
from icpo_eval.errors import IcpoError
from icpo_eval.judges import RULE_JUDGE_VERSION, prompt_version
from icpo_eval.leaderboard import build
from icpo_eval.records import RunSpec
from icpo_eval.rejudge import rejudge
from icpo_eval.runner import run
from icpo_eval.store import CONVERSATIONS, read_conversations
from icpo_eval.tasksets import write_jsonl
from tests.conftest import ScriptedBackend, make_math
from tests.fake_api import api_cache, fake_server  # noqa: F401


def asks_then_answers(messages):
    """Asks while a required shard is missing, then answers 8 (right for t1, wrong for t2)."""
    said = " ".join(m["content"] for m in messages if m["role"] == "user")
    if "buys 5" in said and "starts with 3" in said:
        return "3 + 5 = 8.\nAnswer: 8"
    return "How many apples does Tom buy at the market?"


def make_run(tmp_path: Path, name: str = "run", task_ids=("t1", "t2")) -> Path:
    tasks = tmp_path / f"{name}-tasks.jsonl"
    write_jsonl([make_math(t, answer="8" if t == "t1" else "9") for t in task_ids], tasks)
    spec = RunSpec(
        model="scripted", tasks=str(tasks), modes=["full", "sharded"], out=str(tmp_path / name)
    )
    run(spec, backend=ScriptedBackend(asks_then_answers), progress=False)
    return tmp_path / name


def age(run_dir: Path) -> None:
    """Make a run look judged by an old judge: no versions, and every question taken for an
    answer attempt (as a judge that reads any question mark after a number as an answer)."""
    path = run_dir / CONVERSATIONS
    convs = read_conversations(path)
    lines = []
    for c in convs:
        c.judge_version = None
        for t in c.assistant_turns:
            t.judge_version = None
            if t.category == "clarification":
                t.category, t.score, t.reward = "answer_attempt", 0.0, 0.0
        lines.append(json.dumps(c.to_dict()))
    path.write_text("\n".join(lines) + "\n")


def test_rejudge_restores_categories_and_keeps_the_trajectory(tmp_path):
    fresh = make_run(tmp_path)
    old = tmp_path / "old"
    shutil.copytree(fresh, old)
    age(old)
    before = (old / CONVERSATIONS).read_bytes()

    res = rejudge(old, "rule", out=tmp_path / "new")

    assert (old / CONVERSATIONS).read_bytes() == before  # the source is only read
    want = {c.conversation_id: c for c in read_conversations(fresh / CONVERSATIONS)}
    got = read_conversations(tmp_path / "new" / CONVERSATIONS)
    assert res.written == len(got) == len(want) == 4 and res.failed == res.unmatched == 0
    asked = sum(t.category == "clarification" for c in want.values() for t in c.assistant_turns)
    assert asked > 0 and res.changes == {("answer_attempt", "clarification"): asked}
    for c in got:
        w = want[c.conversation_id]
        assert [t.content for t in c.turns] == [t.content for t in w.turns]  # as it ran
        assert [t.category for t in c.turns] == [t.category for t in w.turns]
        assert [t.reward for t in c.turns] == [t.reward for t in w.turns]
        assert (c.final_score, c.first_answer_turn) == (w.final_score, w.first_answer_turn)
        assert c.rejudged_from == str(old) and c.judge == "rule"
        assert c.judge_version == RULE_JUDGE_VERSION
        assert all(t.judge_version == RULE_JUDGE_VERSION for t in c.assistant_turns)
    spec = RunSpec.from_dict(json.loads((tmp_path / "new" / "run.json").read_text()))
    assert spec.judge == "rule" and spec.out == str(tmp_path / "new")


def test_rejudge_resumes_and_never_writes_over_its_source(tmp_path):
    src = make_run(tmp_path)
    first = rejudge(src, "rule", out=tmp_path / "new")
    again = rejudge(src, "rule", out=tmp_path / "new")
    assert (first.written, again.written, again.skipped) == (4, 0, 4)
    assert len(read_conversations(tmp_path / "new" / CONVERSATIONS)) == 4
    with pytest.raises(IcpoError, match="new run folder"):
        rejudge(src, "rule", out=src)
    default = rejudge(src, "rule")
    assert default.out == tmp_path / f"run-rejudged-rule-v{RULE_JUDGE_VERSION}"


def test_leaderboard_refuses_runs_judged_by_different_versions(tmp_path):
    a = make_run(tmp_path, "a", task_ids=("t1",))
    b = make_run(tmp_path, "b", task_ids=("t2",))
    age(b)
    with pytest.raises(IcpoError, match=r"judge_version .*rejudge"):
        build([a, b])
    rejudge(b, "rule", out=tmp_path / "b2")
    table = build([a, tmp_path / "b2"])
    assert set(table["judge_version"]) == {RULE_JUDGE_VERSION}
    assert table.loc[table.family == "all", "n_conversations"].sum() == 4


def test_rejudge_with_the_llm_judge(tmp_path, fake_server):
    src = make_run(tmp_path)
    res = rejudge(
        src,
        "llm:openai/fake-judge",
        out=tmp_path / "llm",
        spec_overrides={"judge_api_base": [fake_server.url], "max_attempts": 2},
    )
    got = read_conversations(tmp_path / "llm" / CONVERSATIONS)
    assert res.written == 4 and res.failed == 0
    version = prompt_version("judge_llm.j2")
    assert version.startswith("judge_llm.j2@") and len(version) == len("judge_llm.j2@") + 12
    for c in got:
        assert c.judge == "llm:openai/fake-judge" and c.judge_version == version
        for t in c.assistant_turns:
            assert t.judge == "llm:openai/fake-judge" and t.judge_version == version
    # One call per turn, less those the cache answered (t1 and t2 make identical prompts).
    asked = fake_server.log.by_role("judge")
    assert 0 < len(asked) <= res.turns


def test_a_judge_that_gives_up_leaves_the_conversation_for_the_next_call(tmp_path, capsys):
    src = make_run(tmp_path)
    code = main(
        ["rejudge", str(src), "--judge", "llm:openai/fake-judge", "--out", str(tmp_path / "x"),
         "--judge-api-base", "http://127.0.0.1:9", "--max-attempts", "1", "--timeout", "0.5",
         "--no-cache"]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 1
    assert "0 conversations re-judged" in out.out and "4 failed" in out.out
    assert not read_conversations(tmp_path / "x" / CONVERSATIONS)


def test_cli_rejudge_errors_are_one_line(tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / CONVERSATIONS).write_text("")
    assert main(["rejudge", str(bare), "--judge", "rule"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.json" in err[0]
    src = make_run(tmp_path)
    assert main(["rejudge", str(src), "--judge", "nonsense"]) == 2
    assert "unknown judge" in capsys.readouterr().err


def test_exported_rows_carry_the_judge_and_its_version(tmp_path):
    from icpo_eval.export import export_run

    src = make_run(tmp_path)
    rejudge(src, "rule", out=tmp_path / "new")
    out, counts = export_run(tmp_path / "new", tmp_path / "exp", "jsonl")
    rows = [
        json.loads(x)
        for f in sorted(Path(out).glob("*.jsonl"))
        for x in f.read_text().splitlines()
        if x.strip()
    ]
    assert rows and counts["rows"] == len(rows)
    assert {(r["judge"], r["judge_version"]) for r in rows} == {("rule", RULE_JUDGE_VERSION)}
