"""The LLM user simulator and the LLM judge, against the local server (and its faults)."""
# ruff: noqa: F811 -- pytest fixtures are imported from tests/fake_api.py

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icpo_eval.errors import IcpoError
from icpo_eval.judges import (
    LLMJudge,
    RuleJudge,
    agreement,
    get_judge,
    parse_judge_reply,
)
from icpo_eval.models.api import ApiSettings
from icpo_eval.records import Instruction, Shard
from icpo_eval.runner import run
from icpo_eval.simulator import LLMSimulator, get_simulator, parse_simulator_reply
from icpo_eval.store import read_conversations
from icpo_eval.testing.fake_server import FakeServer
from tests.fake_api import api_cache, api_spec, fake_server, tasks_file  # noqa: F401

DATA = Path(__file__).parent / "data"


def all_llm(tmp_path, tasks_file, url, **kw):
    return api_spec(
        tmp_path,
        tasks_file,
        url,
        simulator="llm:openai/fake-sim",
        simulator_api_base=[url],
        judge="llm:openai/fake-judge",
        judge_api_base=[url],
        **kw,
    )


def test_model_simulator_and_judge_all_on_the_local_server(tmp_path, tasks_file, fake_server):
    res = run(all_llm(tmp_path, tasks_file, fake_server.url, runs=2), progress=False)
    convs = res.conversations
    assert len(convs) == 4 and all(c.error is None for c in convs)
    for c in convs:
        assert c.simulator == "llm:openai/fake-sim" and c.judge == "llm:openai/fake-judge"
        users = [t for t in c.turns if t.role == "user"]
        assert users[0].note == "next"  # the first turn is shard 1 verbatim, no call
        assert all(u.note == "llm" for u in users[1:] if u.shards)
        assert all(u.content.startswith("Oh, and also:") for u in users[1:] if u.shards)
        assert all(t.judge == "llm:openai/fake-judge" for t in c.assistant_turns)
    t1 = next(c for c in convs if c.task_id == "t1")
    assert t1.assistant_turns[-1].category == "answer_attempt" and t1.final_score == 1.0
    roles = {r["role"] for r in fake_server.log.requests}
    assert roles == {"assistant", "simulator", "judge"}


@pytest.mark.parametrize("transport", ["litellm", "direct"])
def test_thirty_percent_faults_every_conversation_scored_or_failed(
    tmp_path, tasks_file, api_cache, transport
):
    with FakeServer(fault_rate=0.3, hang_s=1.5, seed=7) as server:
        model = "openai/fake-a" if transport == "litellm" else "hosted_vllm/fake-a"
        spec = all_llm(
            tmp_path, tasks_file, server.url, model=model, runs=4, modes=["full", "sharded"],
            timeout=0.5, max_attempts=3, concurrency=16,
        )  # fmt: skip
        res = run(spec, progress=False)
        faults = dict(server.log.faults)
    assert set(faults) == {"429", "500", "timeout"}, faults
    convs = read_conversations(Path(spec.out) / "conversations.jsonl")
    assert len(convs) == res.written == 16
    for c in convs:
        if c.error is None:
            assert c.final_score is not None and c.finished_at
        else:
            assert c.final_score is None and "attempts" in c.error
    # Most conversations survive: three attempts per call at 30% faults.
    assert sum(c.error is None for c in convs) >= 10


def test_bad_shard_ids_fall_back_to_the_rule_simulator(tmp_path, tasks_file, fake_server):
    spec = api_spec(
        tmp_path, tasks_file, fake_server.url, simulator="llm:openai/badsim",
        simulator_api_base=[fake_server.url], limit=1,
    )  # fmt: skip
    (c,) = run(spec, progress=False).conversations
    later = [t for t in c.turns if t.role == "user"][1:]
    assert later and all(t.note.startswith("rule_fallback: shard_id 999") for t in later)
    sims = [r for r in fake_server.log.requests if r["role"] == "simulator"]
    assert len(sims) == 3 * len([t for t in later if t.shards])  # one try + two retries each
    assert len({r["seed"] for r in sims}) == len(sims)  # each retry is another sample


def test_llm_judge_agreement_with_the_rule_judge_on_the_labelled_set(fake_server):
    """Against the fake server's judge this is a plumbing check (prompt, JSON, parsing, the
    agreement figures), not a measure of any real LLM judge: point ``--judge llm:MODEL`` at a
    real model to measure one."""
    items = [json.loads(x) for x in (DATA / "judge_labelled.jsonl").read_text().splitlines()]
    judge = LLMJudge("openai/fake-judge", ApiSettings([fake_server.url], cache=False))
    rule = RuleJudge()
    inst = Instruction("x", "math", [Shard(1, "?")], fields={"question": "?", "answer": "0"})
    llm_labels, rule_labels, gold = [], [], []
    for it in items:
        history = [{"role": "user", "content": it["context"]}]
        llm_labels.append(judge.classify(inst, it["response"], history))
        rule_labels.append(rule.classify(inst, it["response"], history))
        gold.append(it["label"])
    vs_rule = agreement(llm_labels, rule_labels)
    vs_gold = agreement(llm_labels, gold)
    rule_gold = agreement(rule_labels, gold)
    print(
        f"\nLLM judge (fake server) vs rule judge on {vs_rule['n']} labelled replies: "
        f"7-class {vs_rule['agreement_7class']:.1%}, "
        f"answer-vs-not {vs_rule['agreement_answer_vs_not']:.1%}; vs labels: "
        f"7-class {vs_gold['agreement_7class']:.1%}, "
        f"answer-vs-not {vs_gold['agreement_answer_vs_not']:.1%}; rule judge vs labels: "
        f"7-class {rule_gold['agreement_7class']:.1%}"
    )
    assert vs_rule["n"] == len(items) == 97
    assert len(fake_server.log.by_role("judge")) == sum(
        bool(it["response"].strip()) for it in items
    )
    assert 0.3 < vs_rule["agreement_answer_vs_not"] <= 1.0
    assert set(llm_labels) <= set(gold) | {"discussion", "refuse", "hedge"}


def test_parse_replies():
    assert parse_judge_reply('```json\n{"category": "Hedge"}\n```') == "hedge"
    assert parse_judge_reply('{"category": "guess"}') is None
    assert parse_judge_reply("no json") is None
    ok, why = parse_simulator_reply('Sure! {"response": "He buys 5.", "shard_id": "3"}', {2, 3})
    assert ok == ("He buys 5.", 3) and why == ""
    assert parse_simulator_reply('{"response": "x", "shard_id": 1}', {2})[1].startswith("shard_id")
    assert parse_simulator_reply('{"response": "", "shard_id": 2}', {2})[1] == "empty response"


def test_simulator_profiles_and_names():
    sim = get_simulator("lazy-gpt4o-mini", ApiSettings(cache=False))
    assert isinstance(sim, LLMSimulator) and sim.name == "lazy-gpt4o-mini"
    assert sim.model == "openai/gpt-4o-mini"
    assert get_simulator("rule").name == "rule"
    with pytest.raises(IcpoError, match="unknown simulator"):
        get_simulator("nobody")
    assert get_judge("llm:openai/x", ApiSettings(cache=False)).name == "llm:openai/x"
    with pytest.raises(IcpoError, match="unknown judge"):
        get_judge("oracle")


def test_llm_simulator_with_nothing_left_makes_no_call(fake_server, math_inst):
    sim = LLMSimulator("openai/fake-sim", ApiSettings([fake_server.url], cache=False))
    ut = sim.next_turn(math_inst, {1, 2, 3, 4}, "Could you say more?", True)
    assert ut.note == "no_more_shards" and fake_server.log.requests == []
