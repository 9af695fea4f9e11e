import json

import pytest

from icpo_eval.errors import IcpoError
from icpo_eval.records import (
    Conversation,
    Instruction,
    RunSpec,
    Turn,
    conversation_id,
    derive_seed,
)
from tests.conftest import make_conversation


def test_instruction_round_trip_keeps_lic_layout(math_inst):
    d = math_inst.to_dict()
    assert d["shards"][0] == {"shard_id": 1, "shard": math_inst.shards[0].shard}
    assert d["answer"] == "8" and "fields" not in d  # family fields sit at the top level
    back = Instruction.from_dict(json.loads(json.dumps(d)))
    assert back == math_inst


def test_instruction_without_required_shards_requires_all():
    inst = Instruction.from_dict(
        {
            "task_id": "x",
            "task": "math",
            "shards": [{"shard_id": 2, "shard": "b"}, {"shard_id": 1, "shard": "a"}],
        }
    )
    assert [s.shard_id for s in inst.shards] == [1, 2]  # sorted by id
    assert inst.required_ids == {1, 2}


@pytest.mark.parametrize(
    "bad, words",
    [
        ([], "expected a JSON object"),
        ({"task": "math", "shards": []}, "task_id"),
        ({"task_id": 1, "task": "math", "shards": []}, "non-empty"),
        ({"task_id": 1, "task": "math", "shards": [{"shard": "a"}]}, "shard_id"),
        ({"task_id": 1, "task": "math", "shards": [{"shard_id": "x", "shard": "a"}]}, "integer"),
    ],
)
def test_malformed_instruction_is_a_user_error(bad, words):
    with pytest.raises(IcpoError, match=words):
        Instruction.from_dict(bad)


def test_conversation_round_trip():
    c = make_conversation(
        seed=3,
        turns=[
            Turn(0, "user", "hi", shards=[1]),
            Turn(1, "assistant", "8", category="answer_attempt", score=1.0, fully_specified=True),
        ],
        final_score=1.0,
    )
    assert Conversation.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_ids_and_seeds_are_deterministic_and_distinct():
    a = conversation_id("t1", "sharded", 0, "local/smollm2")
    assert a == conversation_id("t1", "sharded", 0, "local/smollm2")
    assert (
        len(
            {
                a,
                conversation_id("t1", "sharded", 1, "local/smollm2"),
                conversation_id("t1", "full", 0, "local/smollm2"),
                conversation_id("t1", "sharded", 0, "hf/other"),
            }
        )
        == 4
    )
    assert derive_seed(0, a) == derive_seed(0, a) != derive_seed(1, a)


def test_runspec_round_trip():
    s = RunSpec(model="local/smollm2", modes=["sharded"], limit=3)
    assert RunSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
