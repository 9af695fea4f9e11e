"""The ``actions`` family: function calling, with the call's arguments revealed as shards.

The assistant sees a small API catalogue (JSON schemas in the system prompt) and must answer
with the call(s) the user wants. Shard 1 says what the user wants done; every later shard gives
one argument value ("It's for Lisbon.", "Make it a 5-day forecast."). A shard is *required*
when its value differs from what the call would get without it (an argument with no default,
or a value other than the default); a shard that repeats a default ("Celsius is fine.") is
optional. Those instances are made by :mod:`icpo_eval.families.actions_make` from the functions
of :mod:`icpo_eval.families.actions_catalogue`.

References use the format of Lost-in-Conversation's actions records, which is BFCL's
"possible answer": a list of calls ``{func_name: {arg: [allowed values]}}``, where ``""`` among
the allowed values means the argument may be left out. So one evaluator grades both our
generated instances and LiC's, and LiC records load unchanged (``function``,
``reference_answer``).

Parsing never evaluates model text: Python-style calls (``get_weather(city="Paris")``, a list
``[f(a=1), g(b=2)]``) go through :func:`ast.parse` and :func:`ast.literal_eval` on each
argument; JSON calls (``{"name": ..., "arguments": {...}}``, OpenAI's ``{"function": ...}``,
lists of them, ``<tool_call>`` tags) through :mod:`json`. Calls are read from code fences first,
then from the text, where only names of the instance's functions count (prose such as "see the
note (below)" is not a call).

Grading rules (decided here; BFCL's are the starting point):

* the predicted calls must match the expected ones one to one, in any order: same function
  name, no unexpected argument, every argument without ``""`` present;
* strings compare case-insensitively, ignoring spaces and ``,./-_*^`` (BFCL's
  standardisation), so "New York" == "new york";
* numbers compare by value (3 == 3.0), and a numeric string counts as its number ("3" == 3):
  models that write JSON often quote numbers, and the value is unambiguous; booleans accept
  ``true``/``false`` strings but never 0/1;
* lists compare element by element in order; dicts key by key.

The score is 1 or 0; the detail says how many expected calls were matched.

Hostile replies cost bounded work and never raise: an argument that is not plain JSON data (a
bytes literal, a set, an int too wide for a float, nesting past 32 levels) is kept as its
source text and matches nothing; attribute chains past 16 names are no call; JSON that breaks
Python's digit or recursion limits is no call; only the last 100,000 characters are read.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, register
from icpo_eval.families.actions_catalogue import CATALOGUE
from icpo_eval.families.text import BRANCHING, fenced_blocks, outside_fences
from icpo_eval.records import JSON_ERRORS, Instruction

__all__ = [
    "ActionsFamily",
    "Call",
    "instance_functions",
    "match_calls",
    "parse_calls",
    "reference_calls",
    "value_matches",
]

# --------------------------------------------------------------------------------------------
# Parsing calls
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One function call: a name and its keyword arguments."""

    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


#: Bounds on the work one reply may cause: only its last :data:`_MAX_REPLY_CHARS` characters are
#: read (a final answer is at the end), at most :data:`_MAX_JSON_STARTS` ``{``/``[`` are tried as
#: the start of a JSON value, at most :data:`_MAX_PROSE_PARSES` spans parsed as calls in prose.
_MAX_REPLY_CHARS = 100_000
_MAX_JSON_STARTS = 2_000
_MAX_PROSE_PARSES = 2_000
_TOOL_TAG_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_NAME_RE = re.compile(r"(?<![\w.])([A-Za-z_][\w.]*)\s*\(")


#: A parsed argument value deeper than this, or an int wider than this many bits (a float
#: holds up to 2**1024), is no argument any schema asks for: it is kept as source text.
_MAX_VALUE_DEPTH = 32
_MAX_INT_BITS = 1000
#: The stand-in for an argument whose source cannot be written back (a tree too deep); it scores
#: as a wrong value, never as a template's placeholder.
UNREADABLE = "<unreadable>"
#: Source text of an argument is cut to this many characters.
_MAX_SOURCE_CHARS = 2000


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether a value is plain JSON data (str, bool, None, a float, an int a float can hold,
    lists and str-keyed dicts of those), nested at most :data:`_MAX_VALUE_DEPTH` deep: what
    :func:`json.dumps` writes and :func:`value_matches` compares without surprises (a bytes
    literal, a set, a complex number, a 0xFFFF... of 5,000 digits are not)."""
    if depth > _MAX_VALUE_DEPTH:
        return False
    if value is None or isinstance(value, (str, bool, float)):
        return True
    if isinstance(value, int):
        return value.bit_length() <= _MAX_INT_BITS
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _source(node: ast.expr) -> str:
    """The source text of an argument, capped; a tree too deep to unparse is ``"<unreadable>"``."""
    try:
        return ast.unparse(node)[:_MAX_SOURCE_CHARS]
    except (RecursionError, MemoryError, ValueError):
        return UNREADABLE


def _ast_value(node: ast.expr) -> Any:
    """A literal argument's value; a bare name reads as its text (BFCL does the same: models
    write ``unit=celsius``); anything else, or a literal that is not plain data (:func:`_plain`),
    as its source text, which then fails to match."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    else:
        if _plain(value):
            return value
    if isinstance(node, ast.Name):
        return node.id
    return _source(node)


def _call_name(func: ast.expr) -> str | None:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
        if len(parts) > 16:  # a.a.a....a(): no function of any catalogue
            return None
    if not isinstance(func, ast.Name):
        return None
    parts.append(func.id)
    return ".".join(reversed(parts))


def _from_ast_call(node: ast.Call, schemas: dict[str, dict[str, Any]]) -> Call | None:
    name = _call_name(node.func)
    if name is None:
        return None
    args: dict[str, Any] = {}
    if node.args:
        # Positional arguments take the schema's parameter order; without a schema they
        # cannot be named, and the call will not match.
        order = list(schemas.get(name, {}).get("parameters", {}).get("properties", {}))
        for i, a in enumerate(node.args):
            key = order[i] if i < len(order) else f"_arg{i}"
            args[key] = _ast_value(a)
    for kw in node.keywords:
        if kw.arg is None:  # **kwargs
            value = _ast_value(kw.value)
            if isinstance(value, dict):
                args.update({str(k): v for k, v in value.items()})
            continue
        args[kw.arg] = _ast_value(kw.value)
    return Call(name, args)


def _python_calls(text: str, schemas: dict[str, dict[str, Any]]) -> list[Call] | None:
    """Calls when the whole text is a call or a list/tuple of calls; None otherwise."""
    src = text.strip().rstrip(";").strip()
    if not src or len(src) > 20_000:
        return None
    try:
        tree = ast.parse(src, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        try:  # several calls on separate lines
            module = ast.parse(src, mode="exec")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return None
        nodes = []
        for stmt in module.body:
            if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
                return None
            nodes.append(stmt.value)
        calls = [_from_ast_call(n, schemas) for n in nodes]
        return [c for c in calls if c] or None
    body = tree.body
    elts = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    if not elts or not all(isinstance(e, ast.Call) for e in elts):
        return None
    calls = [_from_ast_call(e, schemas) for e in elts]  # type: ignore[arg-type]
    return [c for c in calls if c] or None


def _json_call(obj: Any, known: set[str], depth: int = 0) -> list[Call] | None:
    """Calls in one decoded JSON value, or None if it does not hold calls (nor does a value
    whose arguments are not plain data: :func:`_plain`)."""
    if depth > 4:
        return None
    if isinstance(obj, list):
        out: list[Call] = []
        for item in obj:
            got = _json_call(item, known, depth + 1)
            if got is None:
                return None
            out.extend(got)
        return out or None
    if not isinstance(obj, dict):
        return None
    if "tool_calls" in obj and isinstance(obj["tool_calls"], list):
        return _json_call(obj["tool_calls"], known, depth + 1)
    if isinstance(obj.get("function"), dict):
        return _json_call(obj["function"], known, depth + 1)
    name = obj.get("name")
    if isinstance(name, str) and name:
        args = next((obj[k] for k in ("arguments", "parameters", "args", "params") if k in obj), {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except JSON_ERRORS:
                return None
        if not isinstance(args, dict) or not _plain(args):
            return None
        return [Call(name, dict(args))]
    # BFCL's own answer format: {"func_name": {"arg": value}}.
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key in known and isinstance(value, dict) and _plain(value):
            return [Call(key, dict(value))]
    return None


def _json_calls(text: str, known: set[str]) -> list[Call] | None:
    """Calls in the JSON values found in ``text``: the whole text, else the values that start
    at a ``{`` or ``[`` (the last ones that hold calls win, as a reply's final answer does)."""
    stripped = text.strip()
    try:
        got = _json_call(json.loads(stripped), known)
        if got:
            return got
    except JSON_ERRORS:
        pass
    decoder = json.JSONDecoder()
    found: list[list[Call]] = []
    i, attempts = 0, 0
    while i < len(text):
        if text[i] in "{[":
            attempts += 1
            if attempts > _MAX_JSON_STARTS:
                break
            try:
                obj, end = decoder.raw_decode(text, i)
            except JSON_ERRORS:
                i += 1
                continue
            got = _json_call(obj, known)
            if got:
                found.append(got)
                i = end
                continue
        i += 1
    if not found:
        return None
    return [c for group in found for c in group]


def _calls_in_prose(text: str, schemas: dict[str, dict[str, Any]]) -> list[Call] | None:
    """Python-style calls of known functions written inside running text."""
    calls: list[Call] = []
    pos, budget = 0, _MAX_PROSE_PARSES
    while budget > 0:
        m = _NAME_RE.search(text, pos)
        if m is None:
            break
        pos = m.end()
        if m.group(1) not in schemas:
            continue
        start = m.start(1)
        # The shortest balanced span that parses as one call.
        for close in (k for k, ch in enumerate(text[m.end() :], m.end()) if ch == ")"):
            budget -= 1
            if close - start > 5_000 or budget <= 0:
                break
            try:
                node = ast.parse(text[start : close + 1], mode="eval").body
            except (SyntaxError, ValueError, MemoryError, RecursionError):
                continue
            if isinstance(node, ast.Call):
                call = _from_ast_call(node, schemas)
                if call is not None:
                    calls.append(call)
                pos = close + 1
            break
    return calls or None


def parse_calls(text: str, functions: Sequence[dict[str, Any]] | None = None) -> list[Call] | None:
    """The calls a reply commits to, or None when it holds none.

    Order of preference: the last code fence (or ``<tool_call>`` block) that holds calls, JSON
    or Python; then the whole reply as JSON or as Python; then calls of known functions
    written inside running text. ``functions`` are the instance's schemas (they name the
    known functions and order positional arguments).
    """
    if not text or not text.strip():
        return None
    text = text[-_MAX_REPLY_CHARS:]
    funcs = functions or CATALOGUE
    schemas = {f["name"]: f for f in funcs if isinstance(f, dict) and "name" in f}
    known = set(schemas)
    blocks = [f.body for f in fenced_blocks(text, unclosed=True)]
    blocks += [m.group(1) for m in _TOOL_TAG_RE.finditer(text)]
    for block in reversed(blocks):
        got = _python_calls(block, schemas) or _json_calls(block, known)
        if got:
            return got
    got = _python_calls(text, schemas)
    if got:
        return got
    outside = _TOOL_TAG_RE.sub(" ", outside_fences(text, unclosed=True))
    return _json_calls(outside, known) or _calls_in_prose(outside, schemas)


# --------------------------------------------------------------------------------------------
# Templates and alternatives
# --------------------------------------------------------------------------------------------

#: An argument value left for the user to fill: ``'<AMOUNT>'``, ``'?'``, ``'...'``,
#: ``'YYYY-MM-DD'``, ``'TBD'``, ``'[DATE]'``, ``'{city}'``.
_PLACEHOLDER_VALUE_RE = re.compile(
    r"^(?:<[^<>]{1,40}>|\?+|\.\.\.|…|\[[A-Za-z_ ]{1,40}\]|\{(?:[A-Za-z_]\w{0,40}|\.\.\.|…)\}|"
    r"TBD|TODO|FIXME|unknown|"
    r"N/?A|X{2,})$|Y{4}-MM-DD|HH:MM",
    re.I,
)
_INLINE_CODE_RE = re.compile(r"`([^`\n]{1,500})`")
#: At most this many code blocks and inline spans are read for alternatives.
_MAX_UNITS = 64


def _placeholder(value: Any) -> bool:
    if isinstance(value, str) and value != UNREADABLE:
        return _PLACEHOLDER_VALUE_RE.search(value.strip()) is not None
    if isinstance(value, list):
        return any(_placeholder(v) for v in value[:100])
    if isinstance(value, dict):
        return any(_placeholder(v) for v in list(value.values())[:100])
    return False


def calls_answer_problem(
    response: str, answer: str, functions: Sequence[dict[str, Any]] | None = None
) -> str | None:
    """See :meth:`Family.answer_problem`: ``answer`` is :meth:`ActionsFamily.extract`'s JSON.

    A template: an argument holds a placeholder. Alternatives: one function called with
    different arguments in different code blocks or inline spans, in a reply that offers them
    per reading ("Option A … / Option B …", "depending on …"): calling one function several
    times in one block is a plan, not a choice."""
    calls = json.loads(answer)
    if any(_placeholder(c.get("arguments")) for c in calls if isinstance(c, dict)):
        return "template"
    units = [f.body for f in fenced_blocks(response, unclosed=True)]
    units += _INLINE_CODE_RE.findall(outside_fences(response, unclosed=True))
    seen: dict[str, set[str]] = {}
    for unit in units[:_MAX_UNITS]:
        for call in parse_calls(unit, functions) or []:
            key = json.dumps(call.arguments, sort_keys=True, default=str)
            seen.setdefault(call.name, set()).add(key)
    prose = outside_fences(response, unclosed=True)
    if any(len(v) >= 2 for v in seen.values()) and BRANCHING.search(prose):
        return "alternatives"
    return None


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------

_STD_RE = re.compile(r"[ ,./\-_*^]")


def _std(s: str) -> str:
    return _STD_RE.sub("", s).lower().replace("'", '"')


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:  # an int wider than any float
            return None
    if isinstance(v, str):
        try:
            return float(v.strip().replace(",", ""))
        except ValueError:
            return None
    return None


def _close(got: float, allowed: Any) -> bool:
    """Numbers equal up to 1e-9 relative; an int too wide for a float matches nothing, nor
    does an infinity or NaN ("9" * 400 reads as inf) anything but itself."""
    try:
        want = float(allowed)
    except OverflowError:
        return False
    if not (math.isfinite(got) and math.isfinite(want)):
        return got == want
    return abs(got - want) <= 1e-9 * max(1.0, abs(got))


def value_matches(value: Any, allowed: Any) -> bool:
    """Does a predicted argument value equal one allowed value? (rules: module docstring)"""
    if isinstance(allowed, bool):
        if isinstance(value, bool):
            return value is allowed
        return isinstance(value, str) and value.strip().lower() == str(allowed).lower()
    if isinstance(allowed, (int, float)):
        got = _as_number(value)
        return got is not None and _close(got, allowed)
    if isinstance(allowed, str):
        if isinstance(value, str):
            return _std(value) == _std(allowed)
        return False
    if isinstance(allowed, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(allowed):
            return False
        return all(value_matches(v, a) for v, a in zip(value, allowed))
    if isinstance(allowed, dict):
        if not isinstance(value, dict) or set(value) - set(allowed):
            return False
        for key, options in allowed.items():
            opts = options if isinstance(options, list) else [options]
            if key not in value:
                if "" not in opts:
                    return False
                continue
            if not any(value_matches(value[key], o) for o in opts if o != ""):
                return False
        return True
    return value == allowed


def _call_matches(call: Call, expected: dict[str, Any]) -> bool:
    """``expected`` is one BFCL possible answer: ``{func_name: {arg: [allowed values]}}``."""
    if len(expected) != 1:
        return False
    ((name, params),) = expected.items()
    if call.name != name or not isinstance(params, dict):
        return False
    if set(call.arguments) - set(params):
        return False
    for arg, options in params.items():
        opts = options if isinstance(options, list) else [options]
        if arg not in call.arguments:
            if "" not in opts:
                return False
            continue
        if not any(value_matches(call.arguments[arg], o) for o in opts if o != ""):
            return False
    return True


def match_calls(predicted: Sequence[Call], expected: Sequence[dict[str, Any]]) -> int:
    """Size of the largest one-to-one matching of predicted calls to expected ones."""
    edges = [[j for j, c in enumerate(predicted) if _call_matches(c, e)] for e in expected]
    owner: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in edges[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    return sum(augment(i, set()) for i in range(len(expected)))


# --------------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------------


def _decoded(value: Any) -> Any:
    """LiC data stored through Hugging Face datasets keeps nested fields as JSON strings."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except JSON_ERRORS:
            return value
    return value


def instance_functions(inst: Instruction) -> list[dict[str, Any]]:
    """The functions an instance may call: its own ``function`` list (LiC), else the catalogue."""
    funcs = _decoded(inst.fields.get("function"))
    if funcs is None:
        return CATALOGUE
    if isinstance(funcs, dict):
        funcs = [funcs]
    if not isinstance(funcs, list) or not all(isinstance(f, dict) and "name" in f for f in funcs):
        raise IcpoError(f"{inst.task_id}: 'function' must be a list of function schemas")
    return funcs


def reference_calls(inst: Instruction) -> list[dict[str, Any]]:
    """The expected calls in BFCL's possible-answer format."""
    ref = _decoded(inst.fields.get("reference_answer"))
    if isinstance(ref, dict):
        ref = [ref]
    if (
        not isinstance(ref, list)
        or not ref
        or not all(isinstance(r, dict) and len(r) == 1 for r in ref)
    ):
        raise IcpoError(
            f"{inst.task_id}: 'reference_answer' must be a list of {{function: {{arg: [values]}}}}"
        )
    return ref


@register
class ActionsFamily(Family):
    """Function calling; graded by comparing parsed calls with the allowed answers."""

    name = "actions"
    answer_shape = (
        "one or more function calls from the available functions, with concrete argument "
        "values (no placeholders such as <AMOUNT> or ?)"
    )
    system_prompt_template = "system_actions.j2"
    answer_by_extraction = True
    maker = "icpo_eval.families.actions_make"
    full_prompt_fields = ("question",)

    def prompt_variables(self, inst: Instruction) -> dict[str, Any]:
        """The function schemas, one compact JSON object per line."""
        funcs = instance_functions(inst)
        return {"functions": "\n".join(json.dumps(f, ensure_ascii=False) for f in funcs)}

    def full_prompt(self, inst: Instruction) -> str:
        """LiC's ``fully_specified_question`` (a BFCL chat: the first user message), our
        ``question``, else the shards joined."""
        fsq = _decoded(inst.fields.get("fully_specified_question"))
        while isinstance(fsq, list) and fsq:
            fsq = fsq[0]
        if isinstance(fsq, dict) and isinstance(fsq.get("content"), str):
            return fsq["content"]
        if isinstance(fsq, str) and fsq.strip():
            return fsq
        return super().full_prompt(inst)

    def extract(self, inst: Instruction, response: str) -> str | None:
        """The calls as canonical JSON (``[{"name", "arguments"}]``), or None."""
        calls = parse_calls(response, instance_functions(inst))
        if not calls:
            return None
        return json.dumps([c.to_dict() for c in calls], ensure_ascii=False)

    def answer_problem(self, inst: Instruction, response: str, answer: str) -> str | None:
        """See :func:`calls_answer_problem`."""
        return calls_answer_problem(response, answer, instance_functions(inst))

    def evaluate(self, inst: Instruction, answer: str | None) -> float:
        return self.grade(inst, answer)[0]

    def grade(self, inst: Instruction, answer: str | None) -> tuple[float, dict[str, Any] | None]:
        """1.0 when every expected call is matched and no call is extra; the detail gives
        ``matched`` of ``expected`` and the number ``predicted``."""
        expected = reference_calls(inst)
        if answer is None:
            return 0.0, None
        calls = parse_calls(answer, instance_functions(inst)) or []
        matched = match_calls(calls, expected)
        ok = matched == len(expected) == len(calls)
        detail = {"matched": matched, "expected": len(expected), "predicted": len(calls)}
        return (1.0 if ok else 0.0), detail
