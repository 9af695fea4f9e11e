"""The ``code`` family: write a Python function whose specification arrives in pieces.

The problems are made by :mod:`icpo_eval.families.code_make` (templates whose rule parameters
are each stated by one shard, hidden tests from a reference implementation). This module
extracts the code a reply commits to and grades it: evaluation runs the tests in
:mod:`icpo_eval.sandbox` and compares results in the parent: score 1 only if every test passes;
the pass fraction goes to ``Turn.detail``.

Lost-in-Conversation code records (HumanEval and LiveCodeBench) are graded too: see
:func:`lic_test_cases` and :meth:`CodeFamily.grade`.
"""

from __future__ import annotations

import ast
import base64
import binascii
import io
import pickle
import re
import zlib
from typing import Any

from icpo_eval import sandbox
from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, register
from icpo_eval.families.text import BRANCHING, Fence, fenced_blocks, outside_fences
from icpo_eval.records import Instruction, loads_checked

__all__ = ["CodeFamily", "decode_test_cases", "extract_code", "lic_test_cases"]


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_PY_LANGS = frozenset({"", "python", "py", "python3", "py3"})
#: A fence label as this family reads it: the whole first word of the info string, "." and
#: non-ASCII letters included, so "python3.11" is not "python3" (:attr:`Fence.lang` would say
#: "python3"). Kept so that extraction stays as it was; reading labels the one way would make
#: such blocks count as Python.
_LABEL_RE = re.compile(r"[\w+.-]*")
_CODE_START_RE = re.compile(r"^(?:async\s+def |def |class |import |from \S+ import )", re.M)


_UNFENCED_TRIES = 200


def _label(fence: Fence) -> str:
    m = _LABEL_RE.match(fence.info)
    return m.group().lower() if m else ""


def _parses(src: str) -> ast.Module | None:
    try:
        return ast.parse(src)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _defined(tree: ast.Module) -> set[str]:
    """Top-level function names, and methods of top-level classes (LeetCode's Solution)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {
                n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
    return names


def _unfenced(response: str) -> list[str]:
    """Code written without a fence: from the first line that starts a definition or import,
    cut back line by line from the end until it parses (prose after the code is dropped)."""
    m = _CODE_START_RE.search(response)
    if m is None:
        return []
    lines = response[m.start() :].rstrip().split("\n")
    # At most _UNFENCED_TRIES cuts, the longest first: prose after code is short, and each
    # try parses the whole rest (a reply of 30,000 unparsable lines is not read 30,000 times).
    for end in range(len(lines), max(0, len(lines) - _UNFENCED_TRIES), -1):
        src = "\n".join(lines[:end])
        if _parses(src) is not None:
            return [src]
    return []


def extract_code(response: str, func_name: str | None = None) -> str | None:
    """The code a response commits to: the last complete block holding a function definition.

    Complete means a closed fence whose content parses as Python (a block cut off by the token
    limit is not an answer). Among the blocks, the last one defining ``func_name`` wins; else the
    last one defining any function (a wrongly named function is still an attempt, which the
    tests then fail); with ``func_name`` None (stdin programs), the last block holding any code.
    The whole block is returned, so helpers and imports next to the function come along. With no
    fence at all, unfenced code counts (see :func:`_unfenced`).
    """
    if not response:
        return None
    fences = fenced_blocks(response, unclosed=False)
    blocks = [f.body for f in fences if _label(f) in _PY_LANGS]
    if not blocks and "```" not in response:
        blocks = _unfenced(response)
    parsed = [(b.strip("\n"), t) for b in blocks if (t := _parses(b)) is not None and t.body]
    if func_name:
        for src, tree in reversed(parsed):
            if func_name in _defined(tree):
                return src
    for src, tree in reversed(parsed):
        if func_name is None or _defined(tree):
            return src
    return None


#: Comments that leave work to the reader: ``# TODO``, ``# your code here``, ``# fill in``.
_TODO_COMMENT_RE = re.compile(
    r"#[^\n]*\b(?:TODO|FIXME|your (?:code|logic|implementation) here|fill (?:in|this)|"
    r"implement (?:me|this|here)|replace (?:this|with))",
    re.I,
)
_PLACEHOLDER_STR_RE = re.compile(r"^<[A-Za-z_][\w .-]{0,40}>$|^\?{3}$|^(?:TODO|TBD|FIXME)$")


def _stub_body(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A body that does nothing yet: only a docstring, ``pass``, ``...`` or
    ``raise NotImplementedError``."""
    for stmt in fn.body:
        if isinstance(stmt, ast.Pass):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring or a bare ``...``
        if isinstance(stmt, ast.Raise) and "NotImplementedError" in ast.unparse(stmt):
            continue
        return False
    return True


def code_answer_problem(response: str, answer: str, func_name: str | None) -> str | None:
    """See :meth:`Family.answer_problem`: ``answer`` is the block :func:`extract_code` took."""
    tree = _parses(answer)
    if tree is None:
        return "fragment"
    functions = [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    asked = [f for f in functions if f.name == func_name] or functions
    elided = any(
        isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and n.value.value is ...
        for f in asked
        for n in ast.walk(f)
    )
    placeholder = any(
        isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and _PLACEHOLDER_STR_RE.match(n.value.strip())
        for f in asked
        for n in ast.walk(f)
    )
    todo = _TODO_COMMENT_RE.search(answer) is not None
    if any(_stub_body(f) for f in asked) or elided or placeholder or todo:
        return "template"
    top = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if top and all(name.startswith("_") for name in top):
        return "fragment"  # only private helpers: the function they serve is still to come
    if func_name and func_name not in top and func_name in response.replace(answer, ""):
        return "fragment"  # a helper, while the reply names the asked function it leaves out
    # Two different definitions of the asked function, offered per reading of the task.
    names = {f.name for f in asked}
    versions = set()
    for fence in fenced_blocks(response, unclosed=False):
        if _label(fence) in _PY_LANGS and (t := _parses(fence.body)) is not None:
            if _defined(t) & names:
                versions.add(ast.dump(t))
    prose = outside_fences(response, unclosed=True)
    if len(versions) >= 2 and BRANCHING.search(prose):
        return "alternatives"
    return None


# --------------------------------------------------------------------------------------------
# LiC records (HumanEval, LiveCodeBench)
# --------------------------------------------------------------------------------------------


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only. ``find_class`` is how a pickle reaches any callable (the
    ``os.system`` of a malicious ``__reduce__``), so refusing it leaves nothing to execute.
    :func:`_check_pickle` runs first and admits only the opcodes of one pickled string, so
    nothing can be built, shared or repeated either (no "billion laughs")."""

    def find_class(self, module: str, name: str) -> Any:
        raise IcpoError(
            f"refusing to unpickle test cases that reference {module}.{name}: "
            "only plain data (a JSON string) is accepted"
        )


#: Cap on one test-case field: its encoded text and what zlib inflates it to. LiveCodeBench's
#: largest test sets inflate to tens of MB; a zlib bomb inflates to hundreds.
MAX_TEST_CASES_BYTES = 128 * 2**20
#: The opcodes of ``pickle.dumps(a_str)`` (any protocol): the one shape LiveCodeBench writes.
_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINBYTES", "BINBYTES",
     "BINBYTES8", "SHORT_BINSTRING", "BINSTRING", "STRING"}
)  # fmt: skip
_FRAMING_OPS = frozenset({"PROTO", "FRAME", "MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT", "STOP"})


def _check_pickle(blob: bytes, where: str) -> None:
    """Admit a pickle only if it is one string or bytes value and nothing else: no object,
    container, memo read (``GET``) or callable, so loading it costs no more than its size."""
    import pickletools

    strings: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(blob):
            if op.name in _STRING_OPS:
                strings.append(str(arg)[:100])
            elif op.name not in _FRAMING_OPS:
                if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    what = f"reference {strings[-2]}.{strings[-1]}"
                elif op.name in ("GLOBAL", "INST"):
                    what = f"reference {str(arg).replace(' ', '.')}"
                else:
                    what = f"hold more than one string (opcode {op.name})"
                raise IcpoError(
                    f"{where}: refusing to unpickle test cases that {what}: "
                    "only plain data (a JSON string) is accepted"
                )
    except IcpoError:
        raise
    except Exception as e:  # pickletools raises ValueError, or worse, on a broken pickle
        raise IcpoError(f"{where}: not a pickle ({type(e).__name__}: {str(e)[:100]})") from None
    if len(strings) != 1:
        raise IcpoError(f"{where}: refusing a pickle of {len(strings)} strings: expected one")


def _inflate(blob: bytes, where: str) -> bytes:
    """zlib-decompress at most :data:`MAX_TEST_CASES_BYTES`; a bomb is refused, not inflated."""
    d = zlib.decompressobj()
    out = d.decompress(blob, MAX_TEST_CASES_BYTES)
    if d.unconsumed_tail:
        raise IcpoError(
            f"{where}: test cases inflate past {MAX_TEST_CASES_BYTES // 2**20} MiB; refused"
        )
    return out


def decode_test_cases(raw: Any, where: str = "test cases") -> list[dict[str, Any]]:
    """LiveCodeBench test cases: a JSON list, or base64 of zlib of a pickled JSON string.

    Hostile records are refused with one :class:`IcpoError` naming ``where``: text or inflated
    data past :data:`MAX_TEST_CASES_BYTES`, JSON nested too deep or with too long a number
    (:func:`~icpo_eval.records.check_json_shape`), a pickle that is anything but one string
    (:func:`_check_pickle`).
    """
    if raw is None or raw == "":
        return []
    data: Any = raw
    if isinstance(raw, str):
        if len(raw) > MAX_TEST_CASES_BYTES:
            raise IcpoError(f"{where}: over {MAX_TEST_CASES_BYTES // 2**20} MiB; refused")
        if raw.lstrip()[:1] in ("[", "{", '"'):
            data = loads_checked(raw, where)
        else:
            try:
                blob = _inflate(base64.b64decode(raw, validate=False), where)
                _check_pickle(blob, where)
                data = _DataOnlyUnpickler(io.BytesIO(blob)).load()
            except IcpoError:
                raise
            except (binascii.Error, zlib.error, pickle.UnpicklingError, EOFError, ValueError,
                    TypeError, IndexError, MemoryError) as e:  # fmt: skip
                raise IcpoError(
                    f"{where}: neither JSON nor base64(zlib(pickle(JSON))) ({str(e)[:100]})"
                ) from None
            if isinstance(data, (str, bytes)):
                data = loads_checked(data, f"{where} (unpickled)")
    if not isinstance(data, list):
        raise IcpoError(f"{where}: expected a list of test cases, got {type(data).__name__}")
    out = []
    for i, case in enumerate(data):
        if not isinstance(case, dict) or "input" not in case or "output" not in case:
            raise IcpoError(f"{where}[{i}]: each test case needs 'input' and 'output'")
        kind = case.get("testtype", "stdin")
        if kind not in ("functional", "stdin"):
            raise IcpoError(f"{where}[{i}]: unknown testtype {kind!r}")
        out.append({"input": str(case["input"]), "output": str(case["output"]), "testtype": kind})
    return out


def _metadata(inst: Instruction) -> dict[str, Any]:
    meta = inst.fields.get("metadata") or {}
    if isinstance(meta, str):
        try:
            meta = loads_checked(meta, f"{inst.task_id} metadata") if meta.strip() else {}
        except IcpoError:
            raise IcpoError(f"{inst.task_id}: metadata is not JSON") from None
    return meta if isinstance(meta, dict) else {}


def lic_test_cases(inst: Instruction) -> list[dict[str, Any]]:
    """All test cases of a LiveCodeBench record, public then private."""
    return decode_test_cases(
        inst.fields.get("public_test_cases"), f"{inst.task_id} public_test_cases"
    ) + decode_test_cases(inst.fields.get("private_test_cases"), f"{inst.task_id} private tests")


def _func_name(inst: Instruction) -> str | None:
    """The function the tests call, or None for a stdin program."""
    f = inst.fields
    if isinstance(f.get("func_name"), str):
        return f["func_name"]
    if isinstance(f.get("entry_point"), str):
        return f["entry_point"]
    name = _metadata(inst).get("func_name")
    return name if isinstance(name, str) and name else None


def _normalise_stdout(text: str) -> list[str]:
    """Whitespace-normalised lines: runs of blanks collapsed, blank lines at the ends dropped."""
    lines = [" ".join(line.split()) for line in text.strip().splitlines()]
    return lines


def _prompt_imports(prompt: str) -> str:
    """Top-level imports of a HumanEval prompt (``from typing import List``): a model restating
    the function often leaves them out, and the annotations then fail to resolve."""
    lines = [ln for ln in prompt.splitlines() if re.match(r"(?:import|from\s+\S+\s+import)\s", ln)]
    return "\n".join(lines) + "\n" if lines else ""


# --------------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------------


@register
class CodeFamily(Family):
    """Python functions from sharded specifications, graded by hidden tests in the sandbox."""

    name = "code"
    answer_shape = (
        "a complete Python function of the asked behaviour, defined in full (no "
        "placeholder, stub or elided body) and returning its result"
    )
    system_prompt_template = "system_code.j2"
    answer_by_extraction = True
    uses_sandbox = True
    maker = "icpo_eval.families.code_make"
    #: LiC records keep the original problem statement; generated ones join the shards.
    full_prompt_fields = ("question_content", "prompt")
    #: The system prompt's "(the function's name and parameters, the input format, how to
    #: handle edge cases)".
    asked_about = (
        "function",
        "parameter",
        "argument",
        "input",
        "output",
        "format",
        "return",
        "edge",
        "empty",
        "signature",
        "called",
    )
    #: Limits of one grading run; tests may swap in tighter ones.
    limits = sandbox.Limits()

    def extract(self, inst: Instruction, response: str) -> str | None:
        """See :func:`extract_code`; the function name comes from the instance."""
        return extract_code(response, _func_name(inst))

    def answer_problem(self, inst: Instruction, response: str, answer: str) -> str | None:
        """See :func:`code_answer_problem`."""
        return code_answer_problem(response, answer, _func_name(inst))

    def evaluate(self, inst: Instruction, answer: str | None) -> float:
        return self.grade(inst, answer)[0]

    def grade(self, inst: Instruction, answer: str | None) -> tuple[float, dict[str, Any] | None]:
        """Run the hidden tests in the sandbox: (1.0 if all pass else 0.0, passed/total).

        Three kinds of record: generated (``tests`` of calls), HumanEval (``test`` holding
        ``check(candidate)`` and ``entry_point``) and LiveCodeBench (public/private test cases,
        functional or stdin).
        """
        f = inst.fields
        if isinstance(f.get("tests"), list) and _func_name(inst):
            return self._grade_calls(
                answer, str(_func_name(inst)), [t["input"] for t in f["tests"]],
                [t["output"] for t in f["tests"]],
            )  # fmt: skip
        if isinstance(f.get("test"), str) and isinstance(f.get("entry_point"), str):
            if answer is None:
                return 0.0, {"passed": 0, "total": 1}
            code = _prompt_imports(str(f.get("prompt", ""))) + answer
            passed, res = sandbox.run_check(code, f["test"], f["entry_point"], self.limits)
            return float(passed), self._detail(int(passed), 1, res)
        if "public_test_cases" in f or "private_test_cases" in f:
            cases = lic_test_cases(inst)
            if not cases:
                raise IcpoError(f"{inst.task_id}: code record has no test cases")
            functional = [c for c in cases if c["testtype"] == "functional"]
            stdin = [c for c in cases if c["testtype"] == "stdin"]
            passed, total, details = 0, len(cases), []
            if functional:
                name = _func_name(inst)
                if name is None:
                    raise IcpoError(f"{inst.task_id}: functional tests without metadata.func_name")
                args, expected = [], []
                for c in functional:
                    where = f"{inst.task_id}: test case"
                    lines = [ln for ln in c["input"].split("\n") if ln.strip()]
                    args.append([loads_checked(ln, where) for ln in lines])
                    expected.append(loads_checked(c["output"], where))
                _, d = self._grade_calls(answer, name, args, expected)
                passed += d["passed"]
                details.append(d)
            if stdin:
                p = self._grade_stdin(answer, [c["input"] for c in stdin],
                                      [c["output"] for c in stdin])  # fmt: skip
                passed += p["passed"]
                details.append(p)
            detail: dict[str, Any] = {"passed": passed, "total": total}
            for d in details:
                for k in ("status", "error"):
                    if k in d and k not in detail:
                        detail[k] = d[k]
            return (1.0 if passed == total else 0.0), detail
        raise IcpoError(
            f"{inst.task_id}: code record has no tests (expected 'tests', HumanEval 'test' + "
            "'entry_point', or LiveCodeBench 'public_test_cases'/'private_test_cases')"
        )

    def _grade_calls(
        self, answer: str | None, name: str, args: list[list[Any]], expected: list[Any]
    ) -> tuple[float, dict[str, Any]]:
        if answer is None:
            return 0.0, {"passed": 0, "total": len(args)}
        res = sandbox.run_calls(answer, name, args, self.limits)
        passed = sum(
            1
            for out, exp in zip(res.outcomes, expected, strict=True)
            if out is not None and out.ok and sandbox.same_value(out.value, exp)
        )
        return (1.0 if passed == len(args) else 0.0), self._detail(passed, len(args), res)

    def _grade_stdin(
        self, answer: str | None, inputs: list[str], expected: list[str]
    ) -> dict[str, Any]:
        if answer is None:
            return {"passed": 0, "total": len(inputs)}
        res = sandbox.run_stdin(answer, inputs, self.limits)
        passed = sum(
            1
            for out, exp in zip(res.outcomes, expected, strict=True)
            if out is not None
            and out.ok
            and _normalise_stdout(str(out.value)) == _normalise_stdout(exp)
        )
        return self._detail(passed, len(inputs), res)

    @staticmethod
    def _detail(passed: int, total: int, res: sandbox.SandboxResult) -> dict[str, Any]:
        """passed/total, plus why the run went wrong when it did (for reading transcripts)."""
        detail: dict[str, Any] = {"passed": passed, "total": total}
        if res.status != "ok":
            detail["status"] = res.status
        error = res.load_error or next(
            (o.error for o in res.outcomes if o is not None and not o.ok), None
        )
        if error and passed < total:
            detail["error"] = error[:200]
        return detail
