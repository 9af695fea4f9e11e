"""The actions family: committed set reproducible, calls parsed safely in every common format,
references pass and a changed argument fails."""

from __future__ import annotations

import ast
import collections
import json
from pathlib import Path

import pytest

from icpo_eval.errors import IcpoError
from icpo_eval.families import get_family
from icpo_eval.families.actions import (
    ActionsFamily,
    Call,
    match_calls,
    parse_calls,
    value_matches,
)
from icpo_eval.families.actions_catalogue import CATALOGUE
from icpo_eval.records import Instruction, Shard
from icpo_eval.tasksets import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def family() -> ActionsFamily:
    fam = get_family("actions")
    assert isinstance(fam, ActionsFamily)
    return fam


@pytest.fixture(scope="module")
def committed() -> list[Instruction]:
    return read_jsonl(ROOT / "tasks" / "actions.jsonl")


def test_committed_set_regenerates_byte_for_byte(family: ActionsFamily) -> None:
    text = "".join(
        json.dumps(i.to_dict(), ensure_ascii=False) + "\n" for i in family.generate(200, 0)
    )
    assert (ROOT / "tasks" / "actions.jsonl").read_text(encoding="utf-8") == text


def test_committed_set_shape(committed: list[Instruction]) -> None:
    assert len(committed) >= 100
    n_calls = collections.Counter(len(i.fields["reference_answer"]) for i in committed)
    assert set(n_calls) == {1, 2, 3} and n_calls[1] > n_calls[2] > n_calls[3]
    used = {next(iter(c)) for i in committed for c in i.fields["reference_answer"]}
    assert used == {f["name"] for f in CATALOGUE}
    optional = 0
    for inst in committed:
        ids = [s.shard_id for s in inst.shards]
        assert ids == list(range(1, len(ids) + 1))
        assert 1 in inst.required_ids and len(inst.required_ids) >= 2
        optional += len(ids) - len(inst.required_ids)
        # Shard 1 states the intent only: no argument value of the reference appears in it.
        for call in inst.fields["reference_answer"]:
            for values in next(iter(call.values())).values():
                for v in values:
                    if isinstance(v, str) and len(v) > 3:
                        assert v.lower() not in inst.shards[0].shard.lower()
    assert optional >= 20  # some shards only restate a default


def test_every_reference_scores_one(family: ActionsFamily, committed: list[Instruction]) -> None:
    for inst in committed:
        for reply in (
            inst.fields["answer"],
            f"Sure! Here are the calls:\n```python\n{inst.fields['answer']}\n```",
        ):
            answer = family.extract(inst, reply)
            score, detail = family.grade(inst, answer)
            assert score == 1.0, (inst.task_id, reply, detail)
            n = len(inst.fields["reference_answer"])
            assert detail == {"matched": n, "expected": n, "predicted": n}


def _changed(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return str(value) + "x"


def test_one_changed_argument_scores_zero(
    family: ActionsFamily, committed: list[Instruction]
) -> None:
    checked = 0
    for inst in committed:
        calls = parse_calls(inst.fields["answer"])
        assert calls
        for ci, call in enumerate(calls):
            for arg, value in call.arguments.items():
                wrong = [Call(c.name, dict(c.arguments)) for c in calls]
                wrong[ci].arguments[arg] = _changed(value)
                answer = json.dumps([c.to_dict() for c in wrong])
                assert family.evaluate(inst, answer) == 0.0, (inst.task_id, arg)
                checked += 1
        # A missing call, an extra call and a wrong function name fail too.
        as_dicts = [c.to_dict() for c in calls]
        assert family.evaluate(inst, json.dumps(as_dicts[1:] or [])) == 0.0
        assert family.evaluate(inst, json.dumps(as_dicts + as_dicts[:1])) == 0.0
        renamed = [dict(as_dicts[0], name="get_time")] + as_dicts[1:]
        assert family.evaluate(inst, json.dumps(renamed)) == 0.0
    assert checked > 500


_WEATHER = [{"get_weather": {"city": ["Paris"], "days": [3], "unit": ["", "celsius"]}}]


@pytest.mark.parametrize(
    "reply",
    [
        'get_weather(city="Paris", days=3)',
        "[get_weather(city='paris', days=3, unit='celsius')]",
        "```python\nget_weather(city='Paris', days=3)\n```",
        "```tool_code\n[get_weather(city='Paris', days=3)]\n```",
        '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}',
        '```json\n[{"name": "get_weather", "parameters": {"city": "Paris", "days": "3"}}]\n```',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3.0}}\n'
        "</tool_call>",
        '{"type": "function", "function": {"name": "get_weather", '
        '"arguments": "{\\"city\\": \\"Paris\\", \\"days\\": 3}"}}',
        '{"get_weather": {"city": "Paris", "days": 3}}',
        "I'll call get_weather(city='Paris', days=3) for you.",
        "get_weather('Paris', 3)",  # positional arguments follow the schema's order
        "Let me check.\n\nget_weather(city='Paris', days=3)\nget_weather(city='Paris', days=3)",
    ],
)
def test_formats_parse_and_match(family: ActionsFamily, reply: str) -> None:
    inst = Instruction("w", "actions", [Shard(1, "weather")], fields={"reference_answer": _WEATHER})
    answer = family.extract(inst, reply)
    assert answer is not None
    expected = 0.0 if reply.count("get_weather(") == 2 else 1.0  # an extra call fails
    assert family.evaluate(inst, answer) == expected, answer


@pytest.mark.parametrize(
    "reply",
    [
        "Which city should I check the weather for?",
        "I can call a function (once you tell me the city).",
        "get_weather(city=",
        "",
    ],
)
def test_no_call_no_answer(family: ActionsFamily, reply: str) -> None:
    inst = Instruction("w", "actions", [Shard(1, "weather")], fields={"reference_answer": _WEATHER})
    assert family.extract(inst, reply) is None


def test_parsing_never_evaluates(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = f"get_weather(city=__import__('os').system('touch {marker}'), days=(1).__class__)"
    calls = parse_calls(evil)
    assert calls and calls[0].name == "get_weather"
    assert isinstance(calls[0].arguments["city"], str)  # source text, never run
    assert not marker.exists()
    # Arguments are literals read by ast.literal_eval: nested lists, dicts, negatives work.
    (call,) = parse_calls("f(a=[1, -2], b={'k': (1, 2)}, c=None, d=True)", [{"name": "f"}]) or []
    assert call.arguments == {"a": [1, -2], "b": {"k": (1, 2)}, "c": None, "d": True}
    ast.parse("x")  # the module stays importable alongside ast


def test_value_rules() -> None:
    assert value_matches("New York", "new york") and value_matches("2025-03-14", "2025-03-14")
    assert not value_matches("2025-03-15", "2025-03-14")
    assert value_matches(3, 3.0) and value_matches("3", 3) and not value_matches("three", 3)
    assert value_matches("true", True) and not value_matches(1, True)
    assert not value_matches(True, 1)
    assert value_matches(["a", "b"], ["a", "b"]) and not value_matches(["b", "a"], ["a", "b"])
    assert value_matches({"k": 1}, {"k": [1, 2]})


def test_matching_is_order_insensitive_and_one_to_one() -> None:
    expected = [{"f": {"x": [1]}}, {"f": {"x": [2]}}]
    assert match_calls([Call("f", {"x": 2}), Call("f", {"x": 1})], expected) == 2
    assert match_calls([Call("f", {"x": 1}), Call("f", {"x": 1})], expected) == 1


def test_system_prompt_lists_the_catalogue(
    family: ActionsFamily, committed: list[Instruction]
) -> None:
    prompt = family.system_prompt(committed[0])
    for f in CATALOGUE:
        assert f'"name": "{f["name"]}"' in prompt
    assert "ask" in prompt.lower()


def _lic_actions() -> dict:
    """A LiC actions record (BFCL): its own function list, allowed values per argument."""
    return {
        "task_id": "sharded-BFCL-parallel-7",
        "task": "actions",
        "shards": [
            {"shard_id": 1, "shard": "Find me some restaurants."},
            {"shard_id": 2, "shard": "In Boston and in Denver."},
            {"shard_id": 3, "shard": "Italian food."},
        ],
        "function": [
            {
                "name": "restaurant.search",
                "description": "Find restaurants.",
                "parameters": {
                    "type": "dict",
                    "properties": {
                        "location": {"type": "string"},
                        "cuisine": {"type": "string"},
                        "max_results": {"type": "integer", "default": 5},
                    },
                    "required": ["location", "cuisine"],
                },
            }
        ],
        "reference_answer": [
            {
                "restaurant.search": {
                    "location": ["Boston, MA", "Boston"],
                    "cuisine": ["Italian"],
                    "max_results": ["", 5],
                }
            },
            {
                "restaurant.search": {
                    "location": ["Denver, CO", "Denver"],
                    "cuisine": ["Italian"],
                    "max_results": ["", 5],
                }
            },
        ],
        "language": "Python",
        "test_category": "parallel",
        "fully_specified_question": [
            [{"role": "user", "content": "Find Italian restaurants in Boston and Denver."}]
        ],
    }


def test_lic_record(family: ActionsFamily, tmp_path: Path) -> None:
    from icpo_eval.tasksets import load_lic

    path = tmp_path / "lic.json"
    path.write_text(json.dumps([_lic_actions()]))
    (inst,) = load_lic(path)
    assert family.full_prompt(inst) == "Find Italian restaurants in Boston and Denver."
    prompt = family.system_prompt(inst)
    assert "restaurant.search" in prompt and "get_weather" not in prompt
    good = (
        "[restaurant.search(location='Denver', cuisine='italian'), "
        "restaurant.search(location='Boston, MA', cuisine='Italian', max_results=5)]"
    )
    assert family.evaluate(inst, family.extract(inst, good)) == 1.0
    wrong = "[restaurant.search(location='Denver', cuisine='Italian')]"
    assert family.grade(inst, family.extract(inst, wrong)) == (
        0.0,
        {"matched": 1, "expected": 2, "predicted": 1},
    )
    # Fields stored as JSON strings (as Hugging Face datasets keep them) work the same.
    rec = _lic_actions()
    rec["function"] = json.dumps(rec["function"])
    rec["reference_answer"] = json.dumps(rec["reference_answer"])
    as_strings = Instruction.from_dict(rec)
    assert family.evaluate(as_strings, family.extract(as_strings, good)) == 1.0


def test_bad_reference_raises(family: ActionsFamily) -> None:
    inst = Instruction("b", "actions", [Shard(1, "x")], fields={"reference_answer": "nope"})
    with pytest.raises(IcpoError, match="reference_answer"):
        family.evaluate(inst, "f()")
    inst = Instruction("b", "actions", [Shard(1, "x")], fields={"function": [1, 2]})
    with pytest.raises(IcpoError, match="function"):
        family.system_prompt(inst)


def test_rule_judge_counts_a_call_as_an_answer(committed: list[Instruction]) -> None:
    from icpo_eval.judges import RuleJudge

    inst = committed[0]
    history = [{"role": "user", "content": inst.shards[0].shard}]
    judge = RuleJudge()
    assert judge.classify(inst, inst.fields["answer"], history) == "answer_attempt"
    assert judge.classify(inst, "Which currency is the money in?", history) == "clarification"
