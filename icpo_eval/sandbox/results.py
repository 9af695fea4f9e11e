"""What a sandbox run reported, and the plain values in it.

The child writes one Python literal per line on its result channel; :func:`parse_messages`
reads them with :func:`literal` (stricter than ``ast.literal_eval``) into a
:class:`SandboxResult`. :func:`dump` writes such a value back as source (the HumanEval replay),
and :func:`same_value` compares a returned value with an expected one as a test would.

The program can write to the result channel too, so nothing on it is trusted: lines are capped
in size (:data:`MAX_LINE_BYTES`), number, nesting (:data:`MAX_DEPTH`) and in the values they
may build (:data:`MAX_VALUES`); they are read in one pass without ``ast`` (whose tree cost 1-2 GB
for a 4 MB value) and without recursion; sets and dicts whose keys share hash values are refused
before Python builds them (:data:`MAX_COLLISIONS`); every field is type-checked. A line that
breaks any rule is a failed test, never an exception, and neither :func:`same_value` nor
:func:`dump` raises on what :func:`parse_messages` returns.
"""

from __future__ import annotations

import codecs
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    """What one test produced: a value (or stdout text), or the error it raised."""

    ok: bool
    value: Any = None
    error: str | None = None


@dataclass
class SandboxResult:
    """Everything one sandbox run reported. ``outcomes[i]`` is None when test i gave nothing."""

    outcomes: list[Outcome | None]
    #: "ok", "timeout", "output_limit", "cpu_limit", "killed:<SIGNAL>", "exit:<code>".
    status: str
    returncode: int | None
    stdout: str  # the child's own stdout (not the tests'), capped
    stderr: str
    wall_s: float
    #: Operations the audit hook refused, in order (e.g. "os.fork", "socket.__new__").
    violations: list[str] = field(default_factory=list)
    #: Load error of the program (syntax error, missing function ...), or None.
    load_error: str | None = None
    #: Which isolation layers were active: {"netns": bool, "userns": bool, "nproc": bool}.
    isolation: dict[str, bool] = field(default_factory=dict)
    #: HumanEval recording run: how ``check`` ended next to the program ("ok" or the error).
    #: Diagnostic only: the verdict comes from the replay (see
    #: :func:`icpo_eval.sandbox.run_check`).
    check_note: str | None = None


#: Most bytes of one result line; a longer line is refused (its test gets no outcome).
MAX_LINE_BYTES = 8_000_000
#: Most lines read from one run (twice ``n_tests`` plus this many, blank ones included): the
#: rest are ignored.
MAX_EXTRA_LINES = 10_000
#: What one run's lines may build, counted in values (scalars and containers, at every level):
#: a plain scalar in a run of them (the fast path: ints, floats, strings without escapes) costs
#: 1, any other value :data:`SLOW_COST`. This bounds the parent's time and memory, whatever the
#: lines look like (about 1 s and 150 MB at worst).
MAX_VALUES = 3_000_000
SLOW_COST = 6
#: Deepest nesting of containers in a line (the child refuses values nested deeper than 200).
MAX_DEPTH = 210
#: Most elements of one set or dict sharing one hash value: Python's sets and dicts take
#: quadratic time over colliding keys (ints that are multiples of 2**61 - 1 all hash to 0), so
#: a set or dict with more such keys is refused before it is built.
MAX_COLLISIONS = 8
#: Longest message kept from a ``loaded``/``checked``/``violation`` line or a test's error.
MAX_NOTE_CHARS = 2_000
#: Most violations kept.
MAX_VIOLATIONS = 200


def parse_messages(data: bytes, n_tests: int) -> SandboxResult:
    """Turn the result channel's lines into outcomes, trusting nothing in them.

    A test reported twice gets no outcome (only the program could have written the second
    line), as does any index out of range and any line that is too long, too deep, too big (see
    :data:`MAX_VALUES`), of an unknown shape or that does not parse: such a test fails, and
    nothing here raises on any input. Time and memory are linear in ``len(data)`` with small
    constants.
    """
    outcomes: list[Outcome | None] = [None] * n_tests
    seen: dict[int, int] = {}
    violations: list[str] = []
    load_error = None
    checked: str | None = None
    budget = [MAX_VALUES]
    max_lines = 2 * max(0, n_tests) + MAX_EXTRA_LINES
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = b""
    pos, size, lines = 0, len(data), 0
    while pos < size and lines < max_lines and budget[0] > 0:
        nl = data.find(b"\n", pos)
        end = size if nl < 0 else nl
        raw, pos = data[pos:end], end + 1
        lines += 1
        if len(raw) > MAX_LINE_BYTES or not raw.strip():
            continue
        try:
            msg = _read(bytes(raw).decode("utf-8", "replace"), budget)
        except _Refused:
            continue
        if type(msg) is not tuple or not msg or type(msg[0]) is not str:
            continue
        kind, n = msg[0], len(msg)
        if kind == "violation" and n == 2 and type(msg[1]) is str:
            if len(violations) < MAX_VIOLATIONS:
                violations.append(msg[1][:MAX_NOTE_CHARS])
        elif kind == "loaded" and n in (2, 3) and msg[1] == "error":
            note = msg[2] if n == 3 and type(msg[2]) is str else "error"
            load_error = note[:MAX_NOTE_CHARS]
        elif kind == "checked" and n == 2 and type(msg[1]) is str:
            checked = msg[1][:MAX_NOTE_CHARS]
        elif kind == "result" and n == 4 and type(msg[1]) is int and msg[2] in ("ok", "error"):
            i = msg[1]
            if not 0 <= i < n_tests:
                continue
            seen[i] = seen.get(i, 0) + 1
            if msg[2] == "ok":
                outcomes[i] = Outcome(True, msg[3])
            elif type(msg[3]) is str:
                outcomes[i] = Outcome(False, None, msg[3][:MAX_NOTE_CHARS])
            else:
                outcomes[i] = None
    for i, count in seen.items():
        if count > 1:
            outcomes[i] = None
    return SandboxResult(
        outcomes, "ok", None, "", "", 0.0, violations, load_error, check_note=checked
    )


_NAMED_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class _Refused(Exception):
    """A line that is not a plain literal of the expected size and shape."""


def literal(text: str, max_values: int = MAX_VALUES) -> Any:
    """Evaluate one Python literal as the stub writes it; :class:`ValueError` otherwise.

    Accepts ints, floats (``float('nan')`` and the infinities too), finite complex numbers,
    strings and bytes as ``repr`` writes them, ``True``/``False``/``None``, lists, tuples
    (``(,)`` is the stub's empty tuple), dicts, set displays and ``set(...)``/``frozenset(...)``
    of a set display or a tuple. Reads in one pass, without ``ast`` (whose tree costs ~100 times
    the text), with at most ``max_values`` values and :data:`MAX_DEPTH` levels, and refuses a set
    or dict whose keys collide (:data:`MAX_COLLISIONS`) or are unhashable.
    """
    try:
        return _read(text, [max_values])
    except _Refused as e:
        raise ValueError(f"not a plain literal: {e}") from None


_NUM = r"\d+(?:\.\d*)?(?:e[+-]?\d+)?"
_ESC = r"\\(?:[\\'\"nrt]|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})"
_BESC = r"\\(?:[\\'\"nrt]|x[0-9a-f]{2})"


def _quoted(esc: str, chars: str) -> str:
    return (
        f"'[^'\\\\\\n{chars}]*(?:{esc}[^'\\\\\\n{chars}]*)*+'"
        f'|"[^"\\\\\\n{chars}]*(?:{esc}[^"\\\\\\n{chars}]*)*+"'
    )


_STR = _quoted(_ESC, "")
_BYTES = _quoted(_BESC, "\\x80-\\U0010ffff")
# One token, after optional blanks. Strings allow exactly the escapes repr writes (so that the
# decoding below is exact); bytes are ASCII. Numbers are capped in length (int() refuses more
# than 4300 digits anyway).
_TOKEN = re.compile(
    r"[ \t]*+(?:"
    rf"(?P<complex>\(-?{_NUM}[+-]{_NUM}j\))"
    r"|(?P<open>[\[({]|set\(|frozenset\()"
    r"|(?P<close>[\])}])"
    r"|(?P<sep>[,:])"
    rf"|(?P<str>{_STR})"
    rf"|b(?P<bytes>{_BYTES})"
    rf"|(?P<num>-?{_NUM}j?)(?![\w.])"
    r"|(?P<name>True|False|None|float\('(?:nan|inf|-inf)'\))"
    r")"
)
_BLANK = re.compile(r"[ \t\r]*")
# Fast paths: up to 4096 comma-terminated ints, or plain scalars (numbers, strings without
# escapes, names), in one match, so that a long list costs C speed instead of a loop turn each.
_INT_RUN = re.compile(r"(?:[ \t]*+-?\d{1,4300}+[ \t]*+(?:,|(?=[\])]))){1,4096}+")
# (Capturing groups inside a possessive repeat trip a bug of Python 3.11's re: the run is
# matched with the groups made non-capturing, then split with them.)
_ITEM = (
    r"[ \t]*+(?:(-?\d{1,4300}+(?:\.\d*+)?(?:e[+-]?\d++)?)|'([^'\\\n]*+)'|(True|False|None))"
    r"[ \t]*+(?:,|(?=[\])]))"
)
_SCALAR_RUN = re.compile(
    "(?:"
    + _ITEM.replace("(-", "(?:-").replace("'([", "'(?:[").replace("(True", "(?:True")
    + "){1,4096}+"
)
_SCALAR_ITEMS = re.compile(_ITEM)
_RUN_START = frozenset("0123456789-'TFN \t")
_NAMES: dict[str, Any] = {
    "True": True,
    "False": False,
    "None": None,
    "float('nan')": math.nan,
    "float('inf')": math.inf,
    "float('-inf')": -math.inf,
}
_MAX_NUMBER_CHARS = 4_400


def _scalar(kind: str, tok: str) -> Any:
    if kind == "str":
        return tok[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
    if kind == "bytes":
        return codecs.escape_decode(tok[1:-1].encode("ascii"))[0]
    if kind == "name":
        return _NAMES[tok]
    if len(tok) > _MAX_NUMBER_CHARS:
        raise _Refused("number too long")
    try:
        if kind == "complex":
            return complex(tok[1:-1])
        if tok.endswith("j"):
            return complex(0.0, float(tok[:-1]))
        if "." in tok or "e" in tok:
            return float(tok)
        return int(tok)
    except (ValueError, OverflowError):
        raise _Refused("bad number") from None


def _checked_keys(keys: list[Any]) -> None:
    """Refuse keys that are unhashable or collide (see :data:`MAX_COLLISIONS`).

    Hash values are ints below 2**61 that hash to themselves, so counting them cannot collide.
    """
    if len(keys) <= MAX_COLLISIONS:
        return
    try:
        counts = Counter(map(hash, keys))
    except TypeError:
        raise _Refused("unhashable key") from None
    if max(counts.values()) > MAX_COLLISIONS:
        raise _Refused("colliding keys")


class _Frame:
    """An open container: its opener, the values so far, and for ``{``: dict values."""

    __slots__ = ("comma", "mode", "opener", "items", "values")

    def __init__(self, opener: str) -> None:
        self.opener = opener
        self.items: list[Any] = []
        self.values: list[Any] = []
        self.mode = ""  # "{" only: "" undecided, "set", "dict", "key" (a key waits for ':')
        self.comma = False

    def add(self, v: Any) -> None:
        if self.mode == "value":
            self.values.append(v)
            self.mode = "dict"
            return
        if self.mode == "dict" and len(self.items) != len(self.values):
            raise _Refused("dict key without a value")
        if self.opener in ("set(", "frozenset(") and self.items:
            raise _Refused("set() takes one argument")
        self.items.append(v)

    def colon(self) -> None:
        if self.opener != "{" or self.mode not in ("", "dict") or not self.items:
            raise _Refused("misplaced ':'")
        if len(self.items) != len(self.values) + 1:
            raise _Refused("misplaced ':'")
        self.mode = "value"

    def comma_(self) -> None:
        if self.mode == "value" or self.opener in ("set(", "frozenset("):
            raise _Refused("misplaced ','")
        if self.opener == "{":
            if self.mode == "":
                self.mode = "set"
            elif self.mode == "dict" and len(self.items) != len(self.values):
                raise _Refused("dict key without a value")
        self.comma = True

    def close(self, closer: str) -> Any:
        o = self.opener
        if o == "[" and closer == "]":
            return self.items
        if o == "(" and closer == ")":
            if len(self.items) == 1 and not self.comma:
                return self.items[0]  # a parenthesised value
            return tuple(self.items)
        if o == "{" and closer == "}":
            if self.mode == "value" or len(self.values) not in (0, len(self.items)):
                raise _Refused("dict key without a value")
            _checked_keys(self.items)
            try:
                if self.values or not self.items:
                    return dict(zip(self.items, self.values, strict=True))
                return set(self.items)
            except (TypeError, ValueError):
                raise _Refused("bad set or dict") from None
        if closer == ")" and o in ("set(", "frozenset("):
            arg = self.items[0] if self.items else ()
            if type(arg) not in (set, tuple):
                raise _Refused("set() of something else than a set or tuple")
            if type(arg) is tuple:
                _checked_keys(list(arg))
            try:
                return set(arg) if o == "set(" else frozenset(arg)
            except TypeError:
                raise _Refused("unhashable element") from None
        raise _Refused("mismatched brackets")


def _runs(text: str, pos: int, top: _Frame, budget: list[int]) -> tuple[int, bool]:
    """Read a run of plain scalars into ``top`` (a list or tuple): where it ends (0 if there is
    none) and whether it ends with a comma (else the container's closer comes next)."""
    m = _INT_RUN.match(text, pos)
    if m is not None:
        parts = m.group().split(",")
        if not parts[-1].strip(" \t"):
            parts.pop()
        try:
            new = list(map(int, parts))
        except ValueError:
            raise _Refused("bad number") from None
    else:
        m = _SCALAR_RUN.match(text, pos)
        if m is None:
            return 0, False
        new = []
        for num, string, name in _SCALAR_ITEMS.findall(text, pos, m.end() + 1):
            if num:
                try:
                    new.append(float(num) if "." in num or "e" in num else int(num))
                except ValueError:
                    raise _Refused("bad number") from None
            elif name:
                new.append(_NAMES[name])
            else:
                new.append(string)
    budget[0] -= len(new)
    if budget[0] < 0:
        raise _Refused("too many values")
    comma = m.group().endswith(",")
    top.items += new
    top.comma = top.comma or comma or len(new) > 1
    return m.end(), comma


def _read(text: str, budget: list[int]) -> Any:
    """The value of ``text``, in one pass with an explicit stack (no recursion).

    ``budget[0]`` is how many more values may be built; it is spent as they are.
    """
    stack: list[_Frame] = []
    pos, match = 0, _TOKEN.match
    while True:
        kind: str | None = ""
        # A value is wanted (or the end of a container that may end here).
        if stack and text[pos : pos + 1] in _RUN_START and stack[-1].opener in "[(":
            run, comma = _runs(text, pos, stack[-1], budget)
            if run:
                pos = run
                if comma:
                    continue
                # The run took the container's last value: its closer follows.
                m = match(text, pos)
                if m is None or m.lastgroup != "close":
                    raise _Refused("expected a closer")
                pos, kind = m.end(), "closed"
                value = stack.pop().close(m.group("close"))
        if kind != "closed":
            m = match(text, pos)
            if m is None:
                raise _Refused("unexpected text")
            pos, kind = m.end(), m.lastgroup
            tok = m.group(kind)  # type: ignore[arg-type]
        if kind == "closed":
            pass
        elif kind == "open":
            if len(stack) >= MAX_DEPTH:
                raise _Refused("nested too deeply")
            stack.append(_Frame(tok))
            continue
        elif kind == "sep":
            top = stack[-1] if stack else None
            if tok == "," and top and top.opener == "(" and not top.items and not top.comma:
                top.comma = True  # "(,)": the stub's empty tuple
                continue
            raise _Refused("misplaced separator")
        elif kind == "close":
            if not stack or (stack[-1].items and not stack[-1].comma) or stack[-1].mode == "value":
                raise _Refused("misplaced closer")
            value = stack.pop().close(tok)
        else:
            value = _scalar(kind, tok)  # type: ignore[arg-type]
        # A value is complete: hand it to its container, then read what follows it.
        while True:
            budget[0] -= SLOW_COST
            if budget[0] < 0:
                raise _Refused("too many values")
            if not stack:
                if _BLANK.match(text, pos).end() != len(text):  # type: ignore[union-attr]
                    raise _Refused("text after the value")
                return value
            top = stack[-1]
            top.add(value)
            m = match(text, pos)
            if m is None or m.lastgroup not in ("sep", "close"):
                raise _Refused("expected ',' or a closer")
            pos, tok = m.end(), m.group(m.lastgroup)
            if tok == ",":
                top.comma_()
                break
            if tok == ":":
                top.colon()
                break
            value = stack.pop().close(tok)


def dump(v: Any) -> str:
    """Python source of a value :func:`literal` built (so: plain built-in types only)."""
    t = type(v)
    if t is float:
        r = repr(v)
        return f"float('{r}')" if r in _NAMED_FLOATS else r
    if t is list:
        return "[" + ",".join(dump(x) for x in v) + "]"
    if t is tuple:
        return "(" + ",".join(dump(x) for x in v) + ",)" if v else "()"
    if t is dict:
        return "{" + ",".join(dump(k) + ":" + dump(x) for k, x in v.items()) + "}"
    if t in (set, frozenset):
        inner = "{" + ",".join(dump(x) for x in v) + "}" if v else "()"
        return f"{t.__name__}({inner})"
    return repr(v)


def same_value(actual: Any, expected: Any, rel_tol: float = 1e-6) -> bool:
    """Whether a returned value matches an expected one as a test would judge it.

    Expected values come from JSON, so tuples and lists are the same thing; floats match within
    ``rel_tol`` (and an int matches an equal float); booleans match only booleans (``True`` is
    not ``1`` here, unlike in Python).
    """
    if type(actual) is bool or type(expected) is bool:
        return type(actual) is bool and type(expected) is bool and actual == expected
    num = (int, float)
    if type(actual) in num and type(expected) in num:
        if isinstance(actual, float) or isinstance(expected, float):
            try:
                a, e = float(actual), float(expected)
            except OverflowError:  # an int too big for a float equals no float
                return False
            if math.isnan(a) or math.isnan(e):
                return math.isnan(a) and math.isnan(e)
            return math.isclose(a, e, rel_tol=rel_tol, abs_tol=1e-9)
        return actual == expected
    seq = (list, tuple)
    if type(actual) in seq and type(expected) in seq:
        return len(actual) == len(expected) and all(
            same_value(a, e, rel_tol) for a, e in zip(actual, expected, strict=True)
        )
    if type(actual) is dict and type(expected) is dict:
        return actual.keys() == expected.keys() and all(
            same_value(actual[k], expected[k], rel_tol) for k in expected
        )
    if type(actual) in (set, frozenset) and type(expected) in (set, frozenset, list, tuple):
        try:
            return actual == set(expected) if type(expected) in seq else actual == expected
        except TypeError:  # an expected list holding lists: no set equals it
            return False
    return type(actual) is type(expected) and actual == expected
