"""The parent trusts nothing on the sandbox's result channel: forged, huge, deep, colliding or
malformed lines are a failed test (no outcome), read in bounded time and memory, never an
exception; and the values of honest lines come back as before."""

from __future__ import annotations

import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from icpo_eval import sandbox
from icpo_eval.sandbox import Limits, run_calls
from icpo_eval.sandbox.results import (
    MAX_LINE_BYTES,
    MAX_VIOLATIONS,
    SandboxResult,
    dump,
    literal,
    parse_messages,
    same_value,
)

M61 = 2**61 - 1  # ints that are multiples of it all hash to 0


def _measured(fn: Callable[[], Any], trace: bool = True) -> tuple[Any, float, int]:
    """What ``fn`` returned, its wall time (without tracing) and its peak traced memory (a
    second run, under tracemalloc, which slows allocations down ~10 times; 0 if not ``trace``)."""
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    if not trace:
        return out, elapsed, 0
    tracemalloc.start()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, elapsed, peak


def _ser(v: Any) -> str:
    """The child's serialiser (icpo_eval/sandbox/child.py ``ser``), for honest lines."""
    t = type(v)
    if t is float:
        r = float.__repr__(v)
        return r if r not in ("nan", "inf", "-inf") else f"float('{r}')"
    if t is list:
        return "[" + ",".join(_ser(x) for x in v) + "]"
    if t is tuple:
        return "(" + ",".join(_ser(x) for x in v) + ",)"
    if t is dict:
        return "{" + ",".join(_ser(k) + ":" + _ser(x) for k, x in v.items()) + "}"
    if t in (set, frozenset):
        inner = "{" + ",".join(_ser(x) for x in v) + "}" if v else "()"
        return ("set(" if t is set else "frozenset(") + inner + ")"
    return repr(v)


def _line(value_source: str, i: int = 0) -> bytes:
    return f"('result', {i}, 'ok', {value_source})\n".encode()


HONEST = [
    0,
    -5,
    10**30,
    1.5,
    -1e-7,
    1e16,
    float("inf"),
    float("-inf"),
    1j,
    2 + 3j,
    "",
    "a'b",
    'a"b',
    "a'\"b",
    "\x00\n\t\r\\",
    "héllo€😀\ud800\x7f\x80\xff\u2028",
    b"",
    b"\x00'\"\\\n\xff",
    True,
    False,
    None,
    [],
    (),
    (1,),
    (1, "a", 2.5, None),
    [1, [2, [3]]],
    {},
    {"k": 1, 2: [3], (1, 2): None},
    set(),
    {1, 2, 3},
    frozenset(),
    frozenset({1, "a"}),
    {frozenset({1}), (1, 2)},
    {"a": {"b": {1: set()}}},
    list(range(10_000)),
    ["x", 1, 2.0, True, None, "y\n"] * 100,
]


@pytest.mark.parametrize("value", HONEST, ids=lambda v: repr(v)[:30])
def test_honest_values_read_back_exactly(value: Any) -> None:
    res = parse_messages(_line(_ser(value)), 1)
    out = res.outcomes[0]
    assert out is not None and out.ok
    assert type(out.value) is type(value) and repr(out.value) == repr(value)
    # What run_check replays: dump's text evaluates (in the replay child's namespace) to it.
    env = {"__builtins__": {}, "float": float, "set": set, "frozenset": frozenset}
    assert repr(eval(dump(out.value), env)) == repr(value)


def test_the_usual_messages_still_read() -> None:
    data = (
        b"('ready',)\n('loaded', 'ok')\n('violation', 'os.fork')\n"
        b"('result', 0, 'ok', [1, 2])\n('result', 1, 'error', 'ValueError: x')\n"
        b"('checked', 'ok')\n"
    )
    res = parse_messages(data, 3)
    assert res.violations == ["os.fork"] and res.check_note == "ok" and res.load_error is None
    assert res.outcomes[0] is not None and res.outcomes[0].value == [1, 2]
    assert res.outcomes[1] is not None and not res.outcomes[1].ok
    assert res.outcomes[1].error == "ValueError: x" and res.outcomes[2] is None
    loaded = parse_messages(b"('loaded', 'error', 'SyntaxError: bad')\n", 1)
    assert loaded.load_error == "SyntaxError: bad"


FORGED = [
    b"('result', '0', 'ok', 1)",  # index not an int
    b"('result', True, 'ok', 1)",  # a bool is not an index
    b"('result', 0, 'ok')",
    b"('result', 0, 'ok', 1, 2)",
    b"('result', 0, 'maybe', 1)",
    b"('result', 0, 'error', [1])",  # the error must be text
    b"('result', -1, 'ok', 1)",
    b"('result', 10**100, 'ok', 1)",
    b"('result', 99999999999999999999999999, 'ok', 1)",
    b"('result', 0, 'ok', {[1]: 2})",  # used to raise TypeError out of grade
    b"('result', 0, 'ok', {[1]})",
    b"('result', 0, 'ok', set([1]))",
    b"('result', 0, 'ok', frozenset({1}, {2}))",
    b"('result', 0, 'ok', {1: 2, 3})",
    b"('result', 0, 'ok', {1, 2: 3})",
    b"('result', 0, 'ok', {1:})",
    b"('result', 0, 'ok', [1 2])",
    b"('result', 0, 'ok', [,])",
    b"('result', 0, 'ok', 1",
    b"('result', 0, 'ok', 1))",
    b"('result', 0, 'ok', 1) junk",
    b"('result', 0, 'ok', __import__('os').system('x'))",
    b"('result', 0, 'ok', 1 / 0)",
    b"('result', 0, 'ok', '\\q')",
    b"('result', 0, 'ok', b'\\u1234')",
    b"('result', 0, 'ok', nan)",
    b"('result', 0, 'ok', " + b"9" * 5000 + b")",  # int() refuses it: ValueError
    b"('result', 0, 'ok', 1e5e5)",
    b"('result', 0, 'ok', (nan+nanj))",
    b"('result', 0, 'ok', f'{1}')",
    b"('result', 0, 'ok', \xff\xfe)",
    b"\x00\x01\x02",
    b"('violation', 5)",
    b"('loaded', 'error', ['x'])",
    b"('checked', 1)",
    b"['result', 0, 'ok', 1]",
    b"()",
    b"(1,)",
    b"{'result': 0}",
]


@pytest.mark.parametrize("line", FORGED, ids=lambda b: b[:40].decode("latin-1"))
def test_forged_lines_are_no_outcome_and_never_raise(line: bytes) -> None:
    res = parse_messages(line + b"\n", 1)
    assert res.outcomes == [None] and res.violations == [] and res.check_note is None
    assert res.load_error is None or res.load_error == "error"


def test_random_mutations_never_raise() -> None:
    rng = random.Random(14)
    good = _line(_ser(HONEST[20:34]))
    for _ in range(2000):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            k = rng.randrange(len(b))
            if op < 0.4:
                b[k] = rng.choice(b"()[]{},:'\"\\ -.0123456789ejbnx\n\xff")
            elif op < 0.7:
                del b[k]
            else:
                b[k:k] = bytes([rng.randrange(256)])
        res = parse_messages(bytes(b), 1)
        assert isinstance(res, SandboxResult)
        if res.outcomes[0] is not None and res.outcomes[0].ok:
            same_value(res.outcomes[0].value, [1])  # comparing it never raises either
            dump(res.outcomes[0].value)


@pytest.mark.parametrize("kind", ["set", "dict", "frozenset of a tuple", "tuple keys"])
def test_colliding_hashes_are_refused_quickly(kind: str) -> None:
    keys = [str(M61 * i) for i in range(40_000)]
    src = {
        "set": "set({" + ",".join(keys) + "})",
        "dict": "{" + ",".join(k + ":0" for k in keys) + "}",
        "frozenset of a tuple": "frozenset((" + ",".join(keys) + ",))",
        "tuple keys": "{" + ",".join(f"({k},)" for k in keys) + "}",
    }[kind]
    res, elapsed, peak = _measured(lambda: parse_messages(_line(src), 1))
    assert res.outcomes == [None]
    assert elapsed < 3.0, elapsed  # a Python set of them took 13 s here, minutes for more
    assert peak < 64 * 2**20, peak


def test_a_few_equal_hashes_are_fine() -> None:
    res = parse_messages(_line("{-1, -2, 0, " + str(M61) + "}"), 1)  # hash(-1) == hash(-2)
    assert res.outcomes[0] is not None and res.outcomes[0].value == {-1, -2, 0, M61}


@pytest.mark.parametrize(
    "source",
    [
        "[" + ",".join(str(i) for i in range(600_000)) + "]",
        "[" + ",".join(["0.5"] * 900_000) + "]",
        repr("x€" * 1_500_000),
        "[" + ",".join(["[123456, 'abcdefghijklm']"] * 160_000) + "]",
    ],
    ids=["ints", "floats", "text", "pairs"],
)
def test_a_legal_4mb_value_is_read_in_bounded_memory(source: str) -> None:
    assert len(source) > 3_000_000
    trace = not source.startswith("[0.5") and not source.startswith("[[")  # slow under tracing
    res, elapsed, peak = _measured(lambda: parse_messages(_line(source), 1), trace)
    out = res.outcomes[0]
    assert out is not None and out.ok
    assert out.value == literal(source)
    assert elapsed < 5.0, elapsed
    assert peak < 160 * 2**20, peak  # ast.parse took 1-2 GB for these


@pytest.mark.parametrize(
    "source",
    [
        "[" + ",".join(["[]"] * 1_300_000) + "]",  # too many values
        "[" + ",".join(["'\\n'"] * 1_000_000) + "]",
        "[" * 100_000 + "]" * 100_000,  # too deep (and no recursion)
        "(" * 300 + "1" + ",)" * 300,
        "'" + "x" * (MAX_LINE_BYTES + 10) + "'",  # too long
    ],
    ids=["many", "escaped-text", "deep", "deep-tuples", "long"],
)
def test_oversized_values_are_no_outcome(source: str) -> None:
    trace = source.startswith(("[[[", "((", "'"))  # the others are slow under tracing
    res, elapsed, peak = _measured(lambda: parse_messages(_line(source), 1), trace)
    assert res.outcomes == [None]
    assert elapsed < 5.0, elapsed
    assert peak < 200 * 2**20, peak


def test_nesting_as_deep_as_the_child_allows_is_read() -> None:
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    res = parse_messages(_line(_ser(deep)), 1)
    assert res.outcomes[0] is not None and res.outcomes[0].value == deep


def test_many_lines_are_capped() -> None:
    spam = b"('violation', 'x')\n" * 200_000 + b"('result', 0, 'ok', 7)\n"
    blank = b"\n" * 16_000_000 + b"('result', 0, 'ok', 7)\n"
    res, elapsed, _ = _measured(lambda: parse_messages(blank, 1), trace=False)
    assert res.outcomes == [None] and elapsed < 3.0
    res, elapsed, _ = _measured(lambda: parse_messages(spam, 1))
    assert len(res.violations) <= MAX_VIOLATIONS and elapsed < 3.0
    assert res.outcomes == [None]  # its line came after the cap: never read


def test_same_value_never_raises_on_odd_pairs() -> None:
    assert not same_value({1}, [[1]])  # set(expected) would raise TypeError
    assert not same_value(10**400, 1.5)  # float(actual) would raise OverflowError
    assert not same_value({1: 2}, {1: [3]})
    assert same_value(frozenset({1, 2}), [2, 1])


def test_a_program_returning_colliding_keys_fails_its_test_quickly() -> None:
    code = f"def f():\n    return {{i * {M61} for i in range(2000)}}\n"
    start = time.monotonic()
    res = run_calls(code, "f", [[]], Limits(wall_s=20))
    assert res.outcomes == [None] and time.monotonic() - start < 10


def test_a_program_returning_a_big_list_still_passes() -> None:
    res = run_calls("def f(n):\n    return list(range(n))\n", "f", [[500_000]])
    out = res.outcomes[0]
    assert out is not None and out.ok and sandbox.same_value(out.value, list(range(500_000)))
