"""Hostile replies, records and run files (issue 14): one bad answer fails one turn, a bad
record is one clear error, and the store refuses what is not a regular file.

Each attack goes through the real path (``judge_reply`` with committed instructions, the task
loaders on files written here, ``RunStore`` on a FIFO or symlink, a whole ``run``) under a
wall-clock alarm, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from icpo_eval.errors import IcpoError
from icpo_eval.families import get_family
from icpo_eval.families.code import decode_test_cases
from icpo_eval.judges import RuleJudge
from icpo_eval.models.base import CallFailed
from icpo_eval.records import Instruction, RunSpec
from icpo_eval.reward import judge_reply
from icpo_eval.store import RunStore, load_run, read_conversations
from icpo_eval.tasksets import load_lic, read_jsonl

ROOT = Path(__file__).resolve().parents[1]


class Hang(Exception):
    """The alarm went off: the code under test did not finish in bounded time."""


@contextmanager
def bounded(seconds: int = 20) -> Iterator[None]:
    """Fail with :class:`Hang` if the block runs longer than ``seconds``."""

    def on_alarm(signum, frame):  # type: ignore[no-untyped-def]
        raise Hang(f"still running after {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def committed(family: str, index: int = 0) -> Instruction:
    return read_jsonl(ROOT / "tasks" / f"{family}.jsonl")[index]


def judge(inst: Instruction, reply: str):  # type: ignore[no-untyped-def]
    family = get_family(inst.task)
    history = [{"role": "user", "content": family.full_prompt(inst)}]
    with bounded():
        return judge_reply(inst, family, RuleJudge(), reply, history, True)


def _actions_call(inst: Instruction) -> str:
    ((name, _),) = inst.fields["reference_answer"][0].items()
    return name


# --------------------------------------------------------------------------------------------
# Hostile replies through judge_reply
# --------------------------------------------------------------------------------------------


def test_actions_deep_attribute_chain_scores_zero() -> None:
    inst = committed("actions")
    name = _actions_call(inst)
    for reply in (
        f"```python\n{name}(amount=" + "a." * 500 + "b)\n```",  # ast.unparse recursion
        f"{name}(amount=" + "a." * 500 + "b, from_currency='CHF', to_currency='EUR')",
        f"{name}(amount=" + "a." * 3000 + "b)",
        "```python\n" + "a." * 3000 + f"{name}(amount=3200)\n```",
    ):
        v = judge(inst, reply)
        assert v.score in (0.0, None) and v.reward == 0.0


def test_actions_bytes_set_and_complex_literals_score_zero() -> None:
    inst = committed("actions")
    name = _actions_call(inst)
    for literal in ('b"CHF"', "{1, 2}", "1j"):
        reply = f"{name}(amount=3200, from_currency={literal}, to_currency='EUR')"
        v = judge(inst, reply)
        assert v.category == "answer_attempt" and v.score == 0.0, literal
        assert v.answer is not None and json.loads(v.answer)  # stored as plain JSON
    # An elided argument leaves the call for the user to complete: a template, not an answer
    # (Lost in Conversation's "not templated"), so it earns nothing on a fully specified turn.
    v = judge(inst, f"{name}(amount=3200, from_currency=..., to_currency='EUR')")
    assert v.category == "discussion" and v.reward == 0.0


def test_actions_huge_hex_int_scores_zero() -> None:
    inst = committed("actions")
    name = _actions_call(inst)
    reply = f"{name}(amount=0x{'F' * 5000}, from_currency='CHF', to_currency='EUR')"
    v = judge(inst, reply)
    assert v.score == 0.0 and v.answer is not None
    json.loads(v.answer)
    # a float-overflowing number as text matches nothing either
    big = f"{name}(amount='{'9' * 400}', from_currency='CHF', to_currency='EUR')"
    assert judge(inst, big).score == 0.0


def test_actions_json_digit_bomb_and_deep_json_score_zero() -> None:
    inst = committed("actions")
    name = _actions_call(inst)
    digits = json.dumps({"name": name, "arguments": {"amount": 0}}).replace("0}", "1" * 5000 + "}")
    nested = "[" * 900 + "]" * 900
    deep = '{"name": "' + name + '", "arguments": {"amount": ' + nested + "}}"
    deeper = "Here: " + "[" * 200_000
    for reply in (digits, f"```json\n{digits}\n```", deep, deeper, "{" * 50_000):
        v = judge(inst, reply)
        assert v.score in (0.0, None) and v.reward == 0.0


def test_actions_reference_still_scores_one() -> None:
    inst = committed("actions")
    assert judge(inst, str(inst.fields["answer"])).score == 1.0


def test_math_number_words_past_the_int_digit_limit_are_no_answer() -> None:
    inst = committed("math")
    family = get_family("math")
    reply = "nine hundred " * 100_000
    with bounded():
        assert family.extract(inst, reply) is None or family.grade(inst, reply)[0] == 0.0
    assert judge(inst, reply).reward == 0.0
    assert family.extract(inst, "Answer: fifty-five") == "55"  # words still read


def test_code_unfenced_reply_of_many_unparsable_lines_is_read_in_bounded_time() -> None:
    from icpo_eval.families.code import extract_code

    inst = committed("code")
    reply = f"def {inst.fields['func_name']}(nums):\n" + "    x = (\n" * 30_000
    start = time.monotonic()
    with bounded(30):
        assert extract_code(reply, inst.fields["func_name"]) is None
        v = judge(inst, reply)
    assert v.score in (0.0, None) and v.reward == 0.0
    assert time.monotonic() - start < 30


def test_an_extractor_or_evaluator_that_raises_scores_zero_with_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inst = committed("math")
    family = get_family("math")

    def boom(self, inst, response):  # type: ignore[no-untyped-def]
        raise RecursionError("maximum recursion depth exceeded " + "x" * 10_000)

    monkeypatch.setattr(type(family), "extract", boom)
    v = judge(inst, "Answer: 55")
    assert v.score == 0.0 and v.reward == 0.0 and v.category == "answer_attempt"
    assert v.detail is not None and v.detail["error"].startswith("RecursionError: maximum")
    assert len(v.detail["error"]) <= 200

    monkeypatch.undo()

    def bad_grade(self, inst, answer):  # type: ignore[no-untyped-def]
        raise TypeError("Object of type bytes is not JSON serializable")

    monkeypatch.setattr(type(family), "grade", bad_grade)
    v = judge(inst, "Answer: 55")
    assert v.score == 0.0 and v.answer == "55"
    assert v.detail == {"error": "TypeError: Object of type bytes is not JSON serializable"}


@pytest.mark.parametrize(
    "error", [OSError(24, "Too many open files"), CallFailed("gave up"), IcpoError("bad record")]
)
def test_infrastructure_failures_still_propagate(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    inst = committed("code")
    family = get_family("code")

    def no_sandbox(self, inst, answer):  # type: ignore[no-untyped-def]
        raise error

    monkeypatch.setattr(type(family), "grade", no_sandbox)
    with pytest.raises(type(error)):
        judge(inst, f"```python\n{inst.fields['reference']}\n```")


# --------------------------------------------------------------------------------------------
# Hostile records through the loaders
# --------------------------------------------------------------------------------------------


def _lic_code(private: str) -> dict:
    return {
        "task_id": "lcb-hostile",
        "task": "code",
        "shards": [{"shard_id": 1, "shard": "Read two numbers, print their sum."}],
        "question_content": "Read two numbers, print their sum.",
        "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3", "testtype": "stdin"}]),
        "private_test_cases": private,
        "metadata": "{}",
    }


def _billion_laughs() -> str:
    """A few hundred bytes of pickle whose one test case's input is 10**9 shared strings."""
    level: object = "lol"
    for _ in range(9):
        level = [level] * 10
    blob = pickle.dumps([{"input": level, "output": "x", "testtype": "stdin"}])
    assert len(blob) < 1000
    return base64.b64encode(zlib.compress(blob)).decode()


def _zlib_bomb(mib: int = 400) -> str:
    z = zlib.compressobj(9)
    chunk = b"\0" * 2**20
    data = b"".join(z.compress(chunk) for _ in range(mib)) + z.flush()
    return base64.b64encode(data).decode()


def _write_lic(tmp_path: Path, records: list[dict]) -> Path:
    p = tmp_path / "lic.json"
    p.write_text(json.dumps(records))
    return p


def test_lic_billion_laughs_pickle_is_one_clear_error(tmp_path: Path) -> None:
    p = _write_lic(tmp_path, [_lic_code(_billion_laughs())])
    with bounded(), pytest.raises(IcpoError, match=r"lic\.json record 0: .*refusing to unpickle"):
        load_lic(p)


def test_lic_zlib_bomb_is_one_clear_error(tmp_path: Path) -> None:
    p = _write_lic(tmp_path, [_lic_code(_zlib_bomb())])
    start = time.monotonic()
    with bounded(30), pytest.raises(IcpoError, match=r"lic\.json record 0: .*inflate past"):
        load_lic(p)
    assert time.monotonic() - start < 30


def test_pickled_json_string_still_decodes_and_pickled_data_is_refused() -> None:
    cases = [{"input": "1 2\n", "output": "3", "testtype": "stdin"}]
    good = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()
    assert decode_test_cases(good) == cases
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        packed = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases), proto))).decode()
        assert decode_test_cases(packed) == cases
    as_data = base64.b64encode(zlib.compress(pickle.dumps(cases))).decode()
    with pytest.raises(IcpoError, match="refusing to unpickle"):
        decode_test_cases(as_data, "x")


def test_test_cases_with_deep_json_or_digit_bombs_are_one_clear_error(tmp_path: Path) -> None:
    for private in (
        "[" * 100_000 + "]" * 100_000,
        '[{"input": "1", "output": "1", "testtype": "stdin", "x": %s}]' % ("[" * 100 + "]" * 100),
        '[{"input": "1", "output": %s, "testtype": "stdin"}]' % ("7" * 5000),
    ):
        p = _write_lic(tmp_path, [_lic_code(private)])
        with bounded(), pytest.raises(IcpoError, match=r"lic\.json record 0: "):
            load_lic(p)


def test_functional_test_case_digit_bomb_is_one_clear_error(tmp_path: Path) -> None:
    private = json.dumps([{"input": "1" * 5000, "output": "1", "testtype": "functional"}])
    rec = _lic_code(private)
    rec["metadata"] = json.dumps({"func_name": "f"})
    inst = Instruction.from_dict(rec)
    with bounded(), pytest.raises(IcpoError, match="lcb-hostile: test case"):
        get_family("code").grade(inst, "def f(x):\n    return x")


_GOOD = json.dumps(committed("math").to_dict())


@pytest.mark.parametrize(
    "line",
    [
        "[" * 100_000 + "]" * 100_000,  # RecursionError inside json
        _GOOD[:-1] + ', "x": %s}' % ("[" * 100 + "]" * 100),
        _GOOD[:-1] + ', "n": %s}' % ("1" * 5000),  # ValueError: Python's int-str limit
        _GOOD[:-1] + ', "n": %s}' % ("1" * 2000),
    ],
    ids=["recursion", "deep", "int-str-limit", "long-int"],
)
def test_read_jsonl_hostile_lines_are_one_clear_error(tmp_path: Path, line: str) -> None:
    p = tmp_path / "tasks.jsonl"
    good = json.dumps(committed("math").to_dict())
    p.write_text(good + "\n" + line + "\n")
    with bounded(), pytest.raises(IcpoError, match=r"tasks\.jsonl:2: "):
        read_jsonl(p)


def test_lic_deep_and_digit_bomb_files_are_one_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "lic.json"
    for text in ("[" * 100_000 + "]" * 100_000, "[%s]" % ("9" * 5000)):
        p.write_text(text)
        with bounded(), pytest.raises(IcpoError, match=r"lic\.json: "):
            load_lic(p)


def test_task_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "tasks.jsonl"
    os.mkfifo(fifo)
    with bounded(), pytest.raises(IcpoError, match="task file is not a regular file"):
        read_jsonl(fifo)
    with bounded(), pytest.raises(IcpoError, match="LiC file is not a regular file"):
        load_lic(fifo)


def test_hf_rows_with_hostile_test_cases_are_one_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    from icpo_eval.tasksets import load_hf

    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps(_lic_code(_billion_laughs())) + "\n")
    with bounded(60), pytest.raises(IcpoError, match=r"record 0: .*refusing to unpickle"):
        load_hf(str(p))


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


def _spec(out: Path) -> RunSpec:
    return RunSpec(model="scripted", tasks="math", modes=["full"], out=str(out))


def test_store_refuses_a_fifo_in_place_of_conversations(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / "conversations.jsonl")
    with bounded(), pytest.raises(IcpoError, match="not a regular file .*FIFO"):
        RunStore.open(out, _spec(out))
    with bounded(), pytest.raises(IcpoError, match="not a regular file .a FIFO."):
        load_run(out)
    with bounded(), pytest.raises(IcpoError, match="not a regular file .a FIFO."):
        read_conversations(out / "conversations.jsonl")


def test_store_refuses_a_symlinked_conversations_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious\n")
    (out / "conversations.jsonl").symlink_to(target)
    with bounded(), pytest.raises(IcpoError, match="is a symlink; refusing"):
        RunStore.open(out, _spec(out))
    with bounded(), pytest.raises(IcpoError, match="is a symlink; refusing"):
        load_run(out)
    assert target.read_text() == "precious\n"


def test_store_append_refuses_a_symlink_put_in_place_mid_run(tmp_path: Path) -> None:
    from tests.conftest import make_scripted_run

    out = make_scripted_run(tmp_path)
    convs = read_conversations(out / "conversations.jsonl")
    store, done = RunStore.open(out, RunSpec.from_dict(json.loads((out / "run.json").read_text())))
    assert len(done) == len(convs)
    target = tmp_path / "elsewhere.txt"
    target.write_text("")
    (out / "conversations.jsonl").unlink()
    (out / "conversations.jsonl").symlink_to(target)
    with pytest.raises(IcpoError, match="is a symlink; refusing"):
        store.append(convs[0])
    assert target.read_text() == ""


def test_store_refuses_a_fifo_run_json_and_a_device(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / "run.json")
    with bounded(), pytest.raises(IcpoError, match="run.json: not a regular file"):
        RunStore.open(out, _spec(out))
    other = tmp_path / "dev"
    other.mkdir()
    (other / "conversations.jsonl").symlink_to("/dev/zero")
    with bounded(), pytest.raises(IcpoError, match="is a symlink; refusing"):
        RunStore.open(other, _spec(other))


# --------------------------------------------------------------------------------------------
# A whole run goes on
# --------------------------------------------------------------------------------------------


def test_a_run_with_hostile_replies_completes_and_only_they_score_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scripted
) -> None:  # type: ignore[no-untyped-def]
    from icpo_eval.runner import run

    math_family = type(get_family("math"))
    real_extract = math_family.extract

    def fragile(self, inst, response):  # type: ignore[no-untyped-def]
        if "BOOM" in response:
            raise RecursionError("maximum recursion depth exceeded")
        return real_extract(self, inst, response)

    monkeypatch.setattr(math_family, "extract", fragile)
    insts = {f: [committed(f, 0), committed(f, 1)] for f in ("actions", "code", "math")}
    name = _actions_call(insts["actions"][1])
    replies = {
        insts["actions"][0].task_id: str(insts["actions"][0].fields["answer"]),
        insts["actions"][1].task_id: f"{name}(amount=b'1', x=" + "a." * 3000 + "b)",
        insts["code"][0].task_id: f"```python\n{insts['code'][0].fields['reference']}\n```",
        insts["code"][1].task_id: "```python\ndef f():\n    return " + "(" * 5000 + "\n```",
        insts["math"][0].task_id: f"Answer: {insts['math'][0].fields['answer']}",
        insts["math"][1].task_id: "BOOM. The answer is 7.\nAnswer: 7",
    }
    hostile = {insts[f][1].task_id for f in insts}
    prompts = {get_family(i.task).full_prompt(i): i.task_id for v in insts.values() for i in v}

    def reply(messages):  # type: ignore[no-untyped-def]
        first = next(m["content"] for m in messages if m["role"] == "user")
        return replies[prompts[first]]

    out = tmp_path / "run"
    spec = RunSpec(model="scripted", tasks="actions,code,math", limit=2, modes=["full"],
                   out=str(out), max_turns=1)  # fmt: skip
    done = threading.Event()
    with bounded(120):
        run(spec, backend=scripted(reply), progress=False)
        done.set()
    convs = {c.task_id: c for c in read_conversations(out / "conversations.jsonl")}
    assert set(convs) == set(replies)
    for task_id, conv in convs.items():
        assert conv.error is None, (task_id, conv.error)
        scores = [t.score for t in conv.turns if t.role == "assistant"]
        assert scores, task_id
        if task_id in hostile:
            assert scores == [0.0] or scores == [None], (task_id, scores)
        else:
            assert scores[-1] == 1.0, (task_id, conv.turns[-1].detail)
    boom = [t for t in convs[insts["math"][1].task_id].turns if t.role == "assistant"][0]
    assert boom.detail == {"error": "RecursionError: maximum recursion depth exceeded"}
