"""What a sandbox run reported, and the plain values in it.

The child writes one Python literal per line on its result channel; :func:`parse_messages`
reads them with :func:`literal` (stricter than ``ast.literal_eval``) into a
:class:`SandboxResult`. :func:`dump` writes such a value back as source (the HumanEval replay),
and :func:`same_value` compares a returned value with an expected one as a test would.
"""

from __future__ import annotations

import ast
import math
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


def parse_messages(data: bytes, n_tests: int) -> SandboxResult:
    """Turn the result channel's lines into outcomes.

    A test reported twice gets no outcome (only the program could have written the second
    line), as does any index out of range or any line that does not parse.
    """
    outcomes: list[Outcome | None] = [None] * n_tests
    seen: dict[int, int] = {}
    violations: list[str] = []
    load_error = None
    checked: str | None = None
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            msg = literal(line)
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            continue
        if not isinstance(msg, tuple) or not msg or not isinstance(msg[0], str):
            continue
        kind = msg[0]
        if kind == "violation" and len(msg) == 2:
            violations.append(str(msg[1]))
        elif kind == "loaded" and len(msg) >= 2 and msg[1] == "error":
            load_error = str(msg[2]) if len(msg) > 2 else "error"
        elif kind == "checked" and len(msg) == 2:
            checked = str(msg[1])
        elif kind == "result" and len(msg) == 4 and type(msg[1]) is int:
            i = msg[1]
            if not 0 <= i < n_tests:
                continue
            seen[i] = seen.get(i, 0) + 1
            if msg[2] == "ok":
                outcomes[i] = Outcome(True, msg[3])
            else:
                outcomes[i] = Outcome(False, None, str(msg[3]))
    for i, count in seen.items():
        if count > 1:
            outcomes[i] = None
    return SandboxResult(
        outcomes, "ok", None, "", "", 0.0, violations, load_error, check_note=checked
    )


_NAMED_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def literal(text: str) -> Any:
    """Evaluate a Python literal written by the stub; never calls anything but set/frozenset
    /float('nan') constructors. Stricter than ast.literal_eval about what it builds."""
    return _node(ast.parse(text, mode="eval").body)


def _node(n: ast.AST) -> Any:
    if isinstance(n, ast.Constant):
        return n.value
    if isinstance(n, ast.List):
        return [_node(x) for x in n.elts]
    if isinstance(n, ast.Tuple):
        return tuple(_node(x) for x in n.elts)
    if isinstance(n, ast.Set):
        return {_node(x) for x in n.elts}
    if isinstance(n, ast.Dict):
        if any(k is None for k in n.keys):
            raise ValueError("dict unpacking")
        return {_node(k): _node(v) for k, v in zip(n.keys, n.values, strict=True)}  # type: ignore[arg-type]
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
        v = _node(n.operand)
        if type(v) not in (int, float, complex):
            raise ValueError("sign on a non-number")
        return -v if isinstance(n.op, ast.USub) else v
    if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Add, ast.Sub)):
        a, b = _node(n.left), _node(n.right)
        if type(a) not in (int, float) or type(b) is not complex:
            raise ValueError("only complex literals may add")
        return a + b if isinstance(n.op, ast.Add) else a - b
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and not n.keywords:
        name, args = n.func.id, [_node(a) for a in n.args]
        if name == "float" and len(args) == 1 and args[0] in _NAMED_FLOATS:
            return _NAMED_FLOATS[args[0]]
        if name in ("set", "frozenset") and len(args) == 1 and type(args[0]) in (set, tuple):
            return set(args[0]) if name == "set" else frozenset(args[0])
    raise ValueError(f"not a plain literal: {type(n).__name__}")


def dump(v: Any) -> str:
    """Python source of a value :func:`literal` built (so: plain built-in types only)."""
    t = type(v)
    if t is float:
        r = repr(v)
        return f"float('{r}')" if r in _NAMED_FLOATS else r
    if t is list:
        return "[" + ",".join(dump(x) for x in v) + "]"
    if t is tuple:
        return "(" + ",".join(dump(x) for x in v) + ",)"
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
            a, e = float(actual), float(expected)
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
        return actual == set(expected) if type(expected) in seq else actual == expected
    return type(actual) is type(expected) and actual == expected
