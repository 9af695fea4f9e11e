"""The code family: deterministic generation, shards that matter, extraction, grading, LiC."""

from __future__ import annotations

import base64
import json
import pickle
import re
import zlib
from pathlib import Path

import jinja2
import pytest

from icpo_eval.errors import IcpoError
from icpo_eval.families import get_family
from icpo_eval.families.code import CodeFamily, decode_test_cases, extract_code
from icpo_eval.families.code_make import (
    TEMPLATE_NAMES,
    reference_source,
    rule_values,
    run_reference,
)
from icpo_eval.records import Instruction, Shard
from icpo_eval.sandbox import Limits
from icpo_eval.tasksets import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "tasks" / "code.jsonl"


@pytest.fixture(scope="module")
def family() -> CodeFamily:
    fam = get_family("code")
    assert isinstance(fam, CodeFamily)
    return fam


@pytest.fixture(scope="module")
def committed() -> list[Instruction]:
    return read_jsonl(COMMITTED)


def test_committed_set_is_reproduced_byte_for_byte(family: CodeFamily) -> None:
    """`icpo-eval tasks generate code --n 120 --seed 0 -o tasks/code.jsonl` writes this file."""
    lines = [json.dumps(i.to_dict(), ensure_ascii=False) + "\n" for i in family.generate(120, 0)]
    assert "".join(lines) == COMMITTED.read_text(encoding="utf-8")


def test_prompt_and_registration(family: CodeFamily) -> None:
    assert family.answer_by_extraction
    text = (ROOT / "prompts" / family.system_prompt_template).read_text()
    rendered = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(text).render()
    assert "```python" in rendered and "ask" in rendered.lower()


def test_generation_is_seeded_and_balanced(family: CodeFamily) -> None:
    a, b = family.generate(24, 1), family.generate(24, 2)
    assert [i.to_dict() for i in a] == [i.to_dict() for i in family.generate(24, 1)]
    assert [i.to_dict() for i in a] != [i.to_dict() for i in b]
    assert sorted(i.fields["template"] for i in a) == sorted(TEMPLATE_NAMES * 2)


def test_shards_and_required(committed: list[Instruction]) -> None:
    assert len(committed) >= 100
    for inst in committed:
        ids = [s.shard_id for s in inst.shards]
        assert ids == list(range(1, len(ids) + 1))
        required = set(inst.required_shards or [])
        assert {1, 2} <= required and len(ids) not in required  # constraints: not required
        name = inst.fields["func_name"]
        assert f"{name}(" not in inst.shards[0].shard  # the intent holds no signature
        assert f"`{name}(" in inst.shards[1].shard
        assert 8 <= len(inst.fields["tests"]) <= 12


def test_stored_tests_match_the_stored_reference(committed: list[Instruction]) -> None:
    for inst in committed:
        f = inst.fields
        assert reference_source(f["template"], f["func_name"], f["params"]) == f["reference"]
        for t in f["tests"]:
            assert run_reference(f["reference"], f["func_name"], t["input"]) == t["output"]


def _flips(inst: Instruction) -> list[dict]:
    """The instance's parameters with one rule changed at a time."""
    p = inst.fields["params"]
    if inst.fields["template"] == "fizz":
        other = next(x for x in range(2, 8) if x not in (p["a"], p["b"]))
        return [{**p, "a": other}, {**p, "b": other}]
    out = []
    for key, value in p.items():
        flipped = (not value) if isinstance(value, bool) else None
        if flipped is None:
            values = rule_values(inst.fields["template"], key)
            flipped = next(v for v in values if v != value)
        out.append({**p, key: flipped})
    return out


def test_every_rule_shard_changes_some_hidden_test(committed: list[Instruction]) -> None:
    """A solution that misses any one rule shard fails at least one test of every instance."""
    for inst in committed:
        f = inst.fields
        for params in _flips(inst):
            src = reference_source(f["template"], f["func_name"], params)
            outs = [run_reference(src, f["func_name"], t["input"]) for t in f["tests"]]
            assert outs != [t["output"] for t in f["tests"]], (inst.task_id, params)


def test_references_score_one_and_rule_missers_zero(
    family: CodeFamily, committed: list[Instruction]
) -> None:
    """One instance per template through the sandbox (the slow test below does all 120)."""
    seen: set[str] = set()
    for inst in committed:
        f = inst.fields
        if f["template"] in seen:
            continue
        seen.add(f["template"])
        score, detail = family.grade(inst, f["reference"])
        assert score == 1.0 and detail == {"passed": len(f["tests"]), "total": len(f["tests"])}
        wrong = reference_source(f["template"], f["func_name"], _flips(inst)[0])
        score, detail = family.grade(inst, wrong)
        assert score == 0.0 and detail is not None and 0 <= detail["passed"] < detail["total"]
    none = f"def {committed[0].fields['func_name']}(*args):\n    return None\n"
    assert family.evaluate(committed[0], none) == 0.0
    n = len(committed[0].fields["tests"])
    assert family.grade(committed[0], None) == (0.0, {"passed": 0, "total": n})


@pytest.mark.slow
def test_every_committed_reference_scores_one_in_the_sandbox(
    family: CodeFamily, committed: list[Instruction]
) -> None:
    for inst in committed:
        assert family.evaluate(inst, inst.fields["reference"]) == 1.0, inst.task_id


def test_extraction() -> None:
    prose = "Sure! Here it is:\n```python\ndef f(x):\n    return x + 1\n```\nHope that helps."
    assert extract_code(prose, "f") == "def f(x):\n    return x + 1"
    several = (
        "First try:\n```python\ndef f(x):\n    return 0\n```\n"
        "Better:\n```py\nimport math\n\ndef f(x):\n    return math.floor(x)\n```\n"
        "Usage:\n```python\nprint(f(2.5))\n```\n"
    )
    assert extract_code(several, "f") == "import math\n\ndef f(x):\n    return math.floor(x)"
    truncated = "```python\ndef f(x):\n    return 1\n```\nNow faster:\n```python\ndef f(x):\n    re"
    assert extract_code(truncated, "f") == "def f(x):\n    return 1"
    assert extract_code("```python\ndef f(x):\n    return", "f") is None
    assert extract_code("```python\ndef f(x:\n```", "f") is None  # does not parse
    assert extract_code("What should the function be called?", "f") is None
    unfenced = "Here you go:\n\ndef f(x):\n    return x * 2\n\nThis doubles x."
    assert extract_code(unfenced, "f") == "def f(x):\n    return x * 2"
    assert extract_code("```python\ndef g(x):\n    return 1\n```", "f") is not None  # wrong name
    assert extract_code("```js\nfunction f() {}\n```", "f") is None
    assert extract_code("```python\nprint(int(input()) * 2)\n```", None) is not None


def _lcb_record(private: str, testtype: str = "stdin", func_name: str = "") -> Instruction:
    public = json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": testtype}])
    return Instruction(
        task_id="lcb-1",
        task="code",
        shards=[Shard(1, "Add two numbers.")],
        required_shards=None,
        fields={
            "question_content": "Read two integers and print their sum.",
            "starter_code": "",
            "public_test_cases": public,
            "private_test_cases": private,
            "metadata": json.dumps({"func_name": func_name} if func_name else {}),
        },
    )


def _packed(obj: object) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(obj))).decode()


def test_livecodebench_private_tests_decode_and_grade(family: CodeFamily) -> None:
    cases = [{"input": "10 20\n", "output": "30", "testtype": "stdin"}]
    inst = _lcb_record(_packed(json.dumps(cases)))
    assert decode_test_cases(inst.fields["private_test_cases"]) == cases
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert family.grade(inst, family.extract(inst, good)) == (1.0, {"passed": 2, "total": 2})
    bad = "```python\na, b = map(int, input().split())\nprint(a * b)\n```"
    score, detail = family.grade(inst, family.extract(inst, bad))
    assert score == 0.0 and detail is not None and detail["passed"] == 0


def test_livecodebench_functional_tests(family: CodeFamily) -> None:
    private = json.dumps(
        [{"input": "[1, 2, 3]\n4", "output": "[5, 6, 7]", "testtype": "functional"}]
    )
    inst = _lcb_record(private, "functional", "addAll")
    inst.fields["public_test_cases"] = json.dumps(
        [{"input": "[]\n1", "output": "[]", "testtype": "functional"}]
    )
    leetcode = (
        "```python\nclass Solution:\n    def addAll(self, nums, k):\n"
        "        return [x + k for x in nums]\n```"
    )
    assert family.grade(inst, family.extract(inst, leetcode)) == (1.0, {"passed": 2, "total": 2})


class _Evil:
    def __reduce__(self) -> tuple:
        import os

        return (os.system, ("touch /tmp/icpo-pwned",))


def test_pickle_with_a_class_reference_is_refused_not_run(tmp_path: Path) -> None:
    marker = Path("/tmp/icpo-pwned")
    marker.unlink(missing_ok=True)
    inst = _lcb_record(_packed(_Evil()))
    with pytest.raises(IcpoError, match=r"refusing to unpickle .*system"):
        CodeFamily().grade(inst, "print(3)")
    assert not marker.exists()
    with pytest.raises(IcpoError, match="neither JSON"):
        decode_test_cases("not json, not base64 either!")
    with pytest.raises(IcpoError, match="unknown testtype"):
        decode_test_cases(json.dumps([{"input": "", "output": "", "testtype": "web"}]))


def test_humaneval_record_evaluates(family: CodeFamily) -> None:
    inst = Instruction(
        task_id="HumanEval/0",
        task="code",
        shards=[Shard(1, "Check whether two numbers are closer than a threshold.")],
        fields={
            "prompt": "from typing import List\n\n\ndef has_close(numbers: List[float], "
            "threshold: float) -> bool:\n",
            "entry_point": "has_close",
            "test": "def check(candidate):\n"
            "    assert candidate([1.0, 2.0, 3.9, 4.0], 0.3) == True\n"
            "    assert candidate([1.0, 2.0, 3.0], 0.5) == False\n",
        },
    )
    good = (
        "```python\ndef has_close(numbers: List[float], threshold: float) -> bool:\n"
        "    s = sorted(numbers)\n"
        "    return any(b - a < threshold for a, b in zip(s, s[1:]))\n```"
    )
    assert family.grade(inst, family.extract(inst, good)) == (1.0, {"passed": 1, "total": 1})
    wrong = "```python\ndef has_close(numbers, threshold):\n    return True\n```"
    assert family.evaluate(inst, family.extract(inst, wrong)) == 0.0


def test_record_without_tests_is_an_icpo_error(family: CodeFamily) -> None:
    inst = Instruction("x", "code", [Shard(1, "Write code.")])
    with pytest.raises(IcpoError, match="no tests"):
        family.grade(inst, "def f(): pass")


def test_runaway_answer_is_graded_zero_quickly(committed: list[Instruction]) -> None:
    fam = CodeFamily()
    fam.limits = Limits(wall_s=3, per_test_s=0.3)
    inst = committed[0]
    name = inst.fields["func_name"]
    score, detail = fam.grade(inst, f"def {name}(*a):\n    while True:\n        pass\n")
    assert score == 0.0 and detail is not None and detail["passed"] == 0
    assert re.search("Timeout", detail.get("error", "")) or detail.get("status") == "timeout"


def test_a_program_with_numeric_conditions_is_an_answer_not_a_hedge():
    """The hedge cues read "if size <= 0: return []" as conditional outcomes: 15 of the 120
    committed references were judged hedges (0 when fully specified, paid as a non-answer when
    not). In the code family they count only in the prose around the program."""
    from icpo_eval.judges import RuleJudge
    from icpo_eval.reward import judge_reply

    family, judge = CodeFamily(), RuleJudge()
    for inst in read_jsonl(COMMITTED):
        reply = f"```python\n{inst.fields['reference']}\n```"
        history = [{"role": "user", "content": inst.shards[0].shard}]
        assert judge.classify(inst, reply, history) == "answer_attempt", inst.task_id
        assert judge_reply(inst, family, judge, reply, history, False).reward == 0.0
    inst = read_jsonl(COMMITTED)[0]
    # A hedge in the prose stays a hedge.
    two = (
        "If you want 1 kept, the answer is:\n```python\ndef f(x):\n    return 1\n```\n"
        "But if you want 2 dropped, use:\n```python\ndef f(x):\n    return 2\n```"
    )
    assert judge.classify(inst, two, [{"role": "user", "content": "x"}]) == "hedge"
