"""The verl interaction (icpo_eval.verl_interaction) against verl's real BaseInteraction: scripted
conversations through verl's async API, the harness's stop rules and turn cap, hostile replies,
the trajectory reward, and the verl export's interaction_kwargs."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ScriptedBackend

from icpo_eval import verl_interaction
from icpo_eval.errors import IcpoError
from icpo_eval.export import export_run
from icpo_eval.records import RunSpec
from icpo_eval.runner import run
from icpo_eval.simulator import NO_MORE_SHARDS
from icpo_eval.store import load_run
from icpo_eval.tasksets import load_tasks, write_jsonl
from icpo_eval.verl_interaction import compute_score
from icpo_eval.verl_reward import compute_score as single_turn_score

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "train" / "verl" / "interaction.yaml"


@pytest.fixture(scope="module", autouse=True)
def verl_modules():
    """Import verl for this module only: test_verl_parity checks that nothing else imports it."""
    before = set(sys.modules)
    verl_interaction.interaction_cls.cache_clear()
    yield
    verl_interaction.interaction_cls.cache_clear()
    for name in set(sys.modules) - before:
        if name == "verl" or name.startswith("verl."):
            del sys.modules[name]


@pytest.fixture(scope="module")
def task():
    """math-gen-0-0000: 5 shards, all required; answer 55."""
    return load_tasks("math", limit=1)[0]


def make(**config):
    return verl_interaction.IcpoInteraction({"name": "icpo", **config})


class Chat:
    """One rollout driven the way verl's tool agent loop drives it."""

    def __init__(self, interaction, inst, instance_id="r1", **kwargs):
        self.it = interaction
        self.kwargs = {"name": "icpo", "instruction": json.dumps(inst.to_dict()), **kwargs}
        self.id = asyncio.run(self.it.start_interaction(instance_id, **self.kwargs))
        self.messages = [{"role": "user", "content": inst.shards[0].shard}]

    def say(self, content):
        self.messages.append({"role": "assistant", "content": content})
        out = asyncio.run(self.it.generate_response(self.id, self.messages, **self.kwargs))
        done, user, reward, meta = out
        assert isinstance(done, bool) and isinstance(user, str) and isinstance(reward, float)
        self.messages.append({"role": "user", "content": user})
        return out


CLARIFY = [
    "How many boxes of books does Noah get?",
    "How many books does each box hold?",
    "Does anyone donate books to Noah?",
    "Do readers return any books to Noah?",
]


def test_it_is_verls_base_interaction_loaded_by_verls_registry():
    from verl.interactions.base import BaseInteraction
    from verl.interactions.utils.interaction_registry import initialize_interactions_from_config

    assert issubclass(verl_interaction.IcpoInteraction, BaseInteraction)
    loaded = initialize_interactions_from_config(str(CONFIG))
    assert list(loaded) == ["icpo"]
    it = loaded["icpo"]
    assert isinstance(it, BaseInteraction) and type(it).__name__ == "IcpoInteraction"
    assert it.name == "icpo" and it.judge_name == "rule" and it.max_turns is None


def test_clarify_then_answer_when_complete(task):
    chat = Chat(make(), task)
    done, user, reward, meta = chat.say(CLARIFY[0])
    assert (done, reward, meta["category"], meta["fully_specified"]) == (
        False,
        1.0,
        "clarification",
        False,
    )
    assert user == "Noah gets 4 boxes of books."  # the shard the question asked about
    for q in CLARIFY[1:]:
        done, user, reward, meta = chat.say(q)
        assert (done, reward) == (False, 1.0)
    assert meta["revealed"] == [1, 2, 3, 4, 5]
    done, user, reward, meta = chat.say("Noah has 40 + 10 + 5 = 55 books. Answer: 55")
    assert (done, reward, meta["fully_specified"], meta["score"]) == (True, 1.0, True, 1.0)
    assert asyncio.run(chat.it.calculate_score(chat.id)) == 1.0


def test_premature_guess_earns_nothing(task):
    chat = Chat(make(), task)
    done, user, reward, meta = chat.say("Noah has 40 books. Answer: 40")
    assert (done, reward, meta["category"]) == (False, 0.0, "answer_attempt")
    assert user == "Noah gets 4 boxes of books."  # the conversation goes on, next shard
    # A lucky correct guess before the task is complete ends it, unpaid (the harness's rule).
    lucky = Chat(make(), task, instance_id="r2")
    done, _, reward, meta = lucky.say("Answer: 55")
    assert (done, reward, meta["score"], meta["fully_specified"]) == (True, 0.0, 1.0, False)


def test_holding_back_after_the_task_is_complete_earns_nothing(task):
    chat = Chat(make(), task)
    for q in CLARIFY:
        chat.say(q)
    done, user, reward, meta = chat.say("Could you tell me how many books Noah had at first?")
    assert (done, reward, meta["fully_specified"]) == (False, 0.0, True)
    assert user == NO_MORE_SHARDS
    done, _, reward, _ = chat.say("Answer: 55")
    assert (done, reward) == (True, 1.0)
    assert asyncio.run(chat.it.calculate_score(chat.id)) == pytest.approx(5 / 6)


def test_turn_cap_ends_the_conversation(task):
    chat = Chat(make(max_turns=2), task)
    assert chat.say(CLARIFY[0])[0] is False
    done, user, reward, meta = chat.say(CLARIFY[1])
    assert (done, reward, meta["capped_unrevealed"]) == (True, 1.0, 3)  # 3, 4, 5 never said
    with pytest.raises(IcpoError, match="has ended"):  # a finished conversation is forgotten
        chat.say(CLARIFY[2])
    # The default cap is the shard count + 2 (records.turn_cap), as in the harness.
    chat = Chat(make(), task, instance_id="r3")
    for i in range(7):
        done = chat.say(CLARIFY[i % 4])[0]
        assert done is (i == 6)


def test_same_rewards_and_stops_as_the_harness(task, tmp_path):
    """The harness's sharded conversation on scripted replies and the interaction on the same
    replies: the same turn rewards, the same user turns, the same end."""
    replies = iter(["Answer: 40", CLARIFY[1], "Hmm.", CLARIFY[3], "Let me think.", "Answer: 55"])
    write_jsonl([task], tmp_path / "t.jsonl")
    spec = RunSpec(
        model="scripted",
        tasks=str(tmp_path / "t.jsonl"),
        modes=["sharded"],
        out=str(tmp_path / "r"),
    )
    run(spec, backend=ScriptedBackend(lambda m: next(replies)), progress=False)
    conv = load_run(tmp_path / "r")[1][0]
    said = [t for t in conv.turns if t.role == "assistant"]
    chat = Chat(make(), task)
    for i, turn in enumerate(said):
        done, user, reward, meta = chat.say(turn.content)
        assert (reward, meta["category"]) == (turn.reward, turn.category)
        assert done is (i == len(said) - 1)
        if not done:
            assert user == conv.turns[turn.index + 1].content


def test_hostile_replies_fail_only_their_turn(task):
    it = make(max_turns=20)
    chat = Chat(it, task)
    t = time.monotonic()
    done, user, reward, meta = chat.say("What is the number of boxes? " * 40_000)  # 1.2 MB
    assert time.monotonic() - t < 20
    assert (done, reward) == (False, 0.0)  # cut and judged as truncated: never paid
    assert "cut to 65536" in meta["input_problem"]
    for content in (["How many boxes?"], None, 7, {"text": "hi"}):
        done, user, reward, meta = chat.say(content)
        assert (done, reward, meta["category"]) == (False, 0.0, "missing")
        assert "not a string" in meta["input_problem"]
    # verl's messages without an assistant message last, or not a list at all
    out = asyncio.run(it.generate_response(chat.id, [{"role": "user", "content": "x"}]))
    assert out[2] == 0.0 and out[3]["input_problem"] == "no assistant message last"
    out = asyncio.run(it.generate_response(chat.id, "not a list"))
    assert out[2] == 0.0 and out[3]["input_problem"] == "no messages"
    # the conversation still works, and the instance's neighbours never noticed
    other = Chat(it, task, instance_id="r2")
    assert other.say(CLARIFY[0])[2] == 1.0
    assert chat.say("Answer: 55")[2] == 1.0  # every shard is out by now


def test_unknown_or_missing_ids_and_bad_kwargs_are_one_clear_error(task):
    it = make()
    with pytest.raises(IcpoError, match="unknown instance id 'nope'"):
        asyncio.run(it.generate_response("nope", [{"role": "assistant", "content": "hi"}]))
    with pytest.raises(IcpoError, match="no instance id"):
        asyncio.run(it.generate_response(None, []))
    with pytest.raises(IcpoError, match="no 'instruction'"):
        asyncio.run(it.start_interaction("a"))
    with pytest.raises(IcpoError, match="not valid JSON"):
        asyncio.run(it.start_interaction("a", instruction="{nope"))
    with pytest.raises(IcpoError, match="shards"):
        asyncio.run(it.start_interaction("a", instruction=json.dumps({"task_id": "x"})))
    good = json.dumps(task.to_dict())
    with pytest.raises(IcpoError, match=r"revealed shard ids \[9\]"):
        asyncio.run(it.start_interaction("a", instruction=good, revealed=[1, 9]))
    with pytest.raises(IcpoError, match="mode must be"):
        make(mode="full")


def test_concurrent_rollouts_keep_their_own_state(task):
    it = make()
    kw = {"name": "icpo", "instruction": json.dumps(task.to_dict())}

    async def rollout(i):
        rid = await it.start_interaction(f"c{i}", **kw)
        msgs = [{"role": "user", "content": task.shards[0].shard}]
        rewards = []
        for reply in (CLARIFY[0] if i % 2 else "Answer: 40", "Answer: 3"):
            msgs.append({"role": "assistant", "content": reply})
            done, user, reward, _ = await it.generate_response(rid, msgs, **kw)
            msgs.append({"role": "user", "content": user})
            rewards.append(reward)
        return rewards

    async def main():
        return await asyncio.gather(*(rollout(i) for i in range(6)))

    results = asyncio.run(main())
    assert results == [[0.0, 0.0] if i % 2 == 0 else [1.0, 0.0] for i in range(6)]


def test_trajectory_reward_is_the_mean_turn_reward():
    info = {"turn_scores": np.array([1.0, 1.0, 0.0, 1.0]), "num_turns": np.int32(9)}
    assert compute_score("icpo_eval/math", "", "{}", info)["score"] == 0.75
    assert compute_score("icpo_eval/math", "", "{}", info, combine="sum")["score"] == 3.0
    # verl ended the rollout after a 3rd reply without asking the interaction: it counts 0
    out = compute_score("icpo_eval/math", "", "{}", {"turn_scores": [1.0, 1.0], "num_turns": 6})
    assert out == {"score": pytest.approx(2 / 3), "icpo_judged_turns": 2, "icpo_unjudged_turns": 1}
    with pytest.raises(IcpoError, match="combine"):
        compute_score("icpo_eval/math", "", "{}", info, combine="max")


def test_a_single_turn_rollout_gets_the_single_turn_reward(task):
    gt = json.dumps(task.to_dict())
    extra = {"turn_scores": [], "num_turns": 2, "fully_specified": False, "messages": "[]"}
    for reply in (CLARIFY[0], "Answer: 55"):
        want = single_turn_score("icpo_eval/math", reply, gt, dict(extra))
        assert compute_score("icpo_eval/math", reply, gt, dict(extra))["score"] == want
    assert compute_score("icpo_eval/math", CLARIFY[0], gt, dict(extra))["score"] == 1.0


def test_without_verl_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "verl.interactions.base", None)
    verl_interaction.interaction_cls.cache_clear()
    try:
        with pytest.raises(IcpoError, match=r"needs verl 0\.7\.1.*pip install 'icpo-eval\[verl\]'"):
            verl_interaction.IcpoInteraction  # noqa: B018
        sessions = verl_interaction.IcpoSessions({})  # the logic itself needs no verl
        assert sessions.name == "icpo"
    finally:
        verl_interaction.interaction_cls.cache_clear()


# --------------------------------------------------------------------------------------------
# The export's interaction_kwargs
# --------------------------------------------------------------------------------------------


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mt")
    write_jsonl(load_tasks("math", limit=3), tmp / "tasks.jsonl")
    spec = RunSpec(
        model="scripted",
        tasks=str(tmp / "tasks.jsonl"),
        modes=["full", "sharded"],
        out=str(tmp / "run"),
    )
    run(
        spec,
        backend=ScriptedBackend(lambda m: "Could you say more about the books?"),
        progress=False,
    )
    return tmp / "run"


def test_multi_turn_export_opens_conversations_at_shard_one(sharded_run, tmp_path):
    out, counts = export_run(sharded_run, tmp_path / "mt", "verl", multi_turn=True)
    df = pd.read_parquet(out / "train.parquet")
    tasks = {i.task_id: i for i in load_tasks("math", limit=3)}
    assert counts["rows"] == len(df) == 3 and set(df["agent_name"]) == {"tool_agent"}
    it = verl_interaction.interaction_cls()({"name": "icpo"})
    for _, rec in df.iterrows():
        extra, prompt = _plain(rec["extra_info"]), _plain(rec["prompt"])
        kwargs = extra["interaction_kwargs"]
        inst = tasks[extra["task_id"]]
        assert kwargs["name"] == "icpo" and kwargs["revealed"] == [1]
        assert prompt[-1] == {"role": "user", "content": inst.shards[0].shard}
        assert [m["role"] for m in prompt] == ["system", "user"]
        rid = asyncio.run(it.start_interaction(None, **kwargs))
        msgs = prompt + [{"role": "assistant", "content": "Answer: 123456"}]
        done, user, reward, meta = asyncio.run(it.generate_response(rid, msgs, **kwargs))
        assert (done, reward, meta["fully_specified"]) == (False, 0.0, False)
        assert user == inst.shards[1].shard
    meta = json.loads((out / "export.json").read_text())
    assert meta["multi_turn"] is True
    with pytest.raises(IcpoError, match="verl only"):
        export_run(sharded_run, tmp_path / "j", "jsonl", multi_turn=True)


def test_every_verl_row_continues_as_a_conversation_from_its_prompt(sharded_run, tmp_path):
    """A row of the ordinary verl export (a later turn of the run, a full or q* prompt) starts
    an interaction that knows what its prompt revealed: the reply is judged as fully specified
    exactly when the row says it is, and the simulator never repeats a shard."""
    out, _ = export_run(sharded_run, tmp_path / "v", "verl", augment=True)
    df = pd.read_parquet(out / "train.parquet")
    it = verl_interaction.interaction_cls()({"name": "icpo"})
    mid = 0
    for _, rec in df.iterrows():
        extra, prompt = _plain(rec["extra_info"]), _plain(rec["prompt"])
        kwargs = extra["interaction_kwargs"]
        mid += extra["source"] == "run" and extra["turn_index"] > 1
        rid = asyncio.run(it.start_interaction(None, **kwargs))
        msgs = prompt + [{"role": "assistant", "content": "How many books does each box hold?"}]
        done, user, reward, meta = asyncio.run(it.generate_response(rid, msgs, **kwargs))
        assert meta["fully_specified"] == extra["fully_specified"], extra["row_id"]
        said = " ".join(m["content"] for m in prompt if m["role"] == "user")
        if not done and user != NO_MORE_SHARDS:
            assert user.replace("I don't know. ", "") not in said
    assert mid > 0  # later turns of the run were among the rows
