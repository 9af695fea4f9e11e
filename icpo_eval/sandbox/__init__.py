"""Run untrusted, model-written Python programs and report what they computed.

Threat model: the programs come from a model under evaluation or under RL training. They are not
written by an attacker with a C exploit, but a policy trained on a reward *will* find any cheap
way to get that reward (print "all tests passed", exit 0 early, patch the test harness) and a
buggy program may fork, allocate or print without end. The sandbox must keep the harness alive,
keep secrets and files out of reach, and make a fake pass impossible.

Design, in layers (each layer is checked by a hostile program in ``tests/test_sandbox.py``):

1. **Unforgeable verdicts: pass/fail is decided in the parent.** The child only *reports* what
   the program computed: the raw return value of each call (or the stdout of each run). The
   expected outputs never enter the child, so printing "all passed", exiting 0 early
   (``os._exit(0)``: the missing results count as failures), writing fake result lines to every
   file descriptor, or monkeypatching anything in the child cannot produce a pass without
   producing the right values, which is solving the task. Return values are serialised by the
   stub (the child program) with references to builtins it captured before the program loaded,
   and only exact builtin types are accepted (an object whose ``__eq__`` always says True is
   refused). HumanEval's ``check(candidate)`` holds its expected values in asserts, so it is run
   twice: once with the program, recording what ``candidate`` returned, and once in a second
   child *without* the program, replaying those values into ``check`` (see :func:`run_check`).
2. **An audit hook** (PEP 578) installed by the stub before the program runs blocks
   process creation (fork, exec, spawn, ``subprocess``, ``os.system``, ``_posixsubprocess``),
   sockets, ``ctypes``, signals to other processes, writes outside the temporary directory,
   reads outside it and the standard library (the task files with the expected outputs are on
   the same disk), and the introspection that could reach the stub's state or disarm the hook
   (frames, ``gc`` walks, tracing, rebinding ``__code__``, building code objects). Audit hooks
   cannot be removed from Python code. The hook keeps no state that the program can reach: its
   configuration lives in closure cells of a function that is never exposed, and it calls only
   builtins captured before the program loads. Known gap: ``marshal.loads`` stays allowed
   (imports need it to read ``.pyc`` files), so hand-crafted bytecode could corrupt the
   interpreter and get past this layer; layers 1 and 3 do not depend on it.
3. **The kernel**: where bubblewrap runs (:func:`strength` is ``"strong"``), the child runs
   under ``bwrap --unshare-all --die-with-parent --new-session`` with no capabilities: its own
   user, pid, network, ipc and uts namespaces; a read-only bind of the Python prefix and the
   system libraries only, a private ``/proc`` and ``/dev``, a read-only root, and a tmpfs as its
   only writable place and working directory. The project, tasks, caches, run store, home and
   the parent's processes do not exist inside, so what the audit hook misses (C-level I/O, a
   disarmed hook, signals, daemons) meets the kernel. Under it, in both strengths: an empty
   environment (no API keys), a new session, resource limits on CPU time, address space, file
   size, open files and core dumps (``RLIMIT_NPROC`` too, except for root, which the kernel
   exempts), a wall clock that kills the process group (under bwrap the outer ``bwrap``'s,
   whose death ends the sandbox's pid namespace and everything in it) and an output cap beyond
   which the child is killed. Where bwrap cannot run (not installed, no user namespaces, not
   Linux), :func:`strength` is ``"weak"``: a fresh host temporary directory as working
   directory, a new network namespace (and a user namespace where the kernel allows one) and
   the layers above; :func:`isolation` says which layers are active.

The stub runs every test of one answer in one child (one interpreter start, ~30-50 ms, per
answer, not per test), with a per-test timer; one test's infinite loop ends that test, and after
two timed-out tests the remaining call tests are skipped (failed) so that a looping answer costs
about two test timeouts, not one per test.

Modules: this one holds the entry points (:func:`run_calls`, :func:`run_stdin`,
:func:`run_check`); :mod:`~icpo_eval.sandbox.child` is the stub (layers 1 and 2), a file that
the parent reads as text and never imports to run; :mod:`~icpo_eval.sandbox.launch` starts the
child under layer 3 (:func:`run_job`, the level below the entry points); and
:mod:`~icpo_eval.sandbox.results` reads what the child reported and compares values.
"""

from __future__ import annotations

from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.sandbox.launch import Limits, isolation, run_job, strength
from icpo_eval.sandbox.results import Outcome, SandboxResult, dump, same_value

__all__ = [
    "Limits",
    "Outcome",
    "SandboxResult",
    "isolation",
    "run_calls",
    "run_check",
    "run_job",
    "run_stdin",
    "same_value",
    "strength",
]


def run_calls(
    code: str, func_name: str, calls: list[list[Any]], limits: Limits | None = None
) -> SandboxResult:
    """Define ``code`` in a child and call ``func_name(*args)`` for each argument list.

    ``outcomes[i].value`` is what call i returned (a plain built-in value). Arguments must be
    JSON-serialisable. A ``class Solution`` with a method ``func_name`` (LeetCode style) works.
    """
    if not func_name.isidentifier():
        raise IcpoError(f"sandbox: {func_name!r} is not a function name")
    job = {"mode": "calls", "code": code, "func_name": func_name, "calls": calls}
    return run_job(job, len(calls), limits or Limits())


def run_stdin(code: str, inputs: list[str], limits: Limits | None = None) -> SandboxResult:
    """Run ``code`` as a program once per input (given on stdin); ``outcomes[i].value`` is the
    text it wrote to stdout."""
    files = {f"in_{i}": text for i, text in enumerate(inputs)}
    job = {"mode": "stdin", "code": code, "inputs": list(files)}
    return run_job(job, len(inputs), limits or Limits(), files)


def run_check(
    code: str, test: str, entry_point: str, limits: Limits | None = None
) -> tuple[bool, SandboxResult]:
    """HumanEval style: does ``check(candidate)`` from ``test`` pass with ``entry_point``?

    The asserts of ``check`` hold the expected values, so running it next to the program would
    let the program forge the verdict (return an object equal to everything, patch ``math``).
    Instead: child 1 runs the program under ``check`` and records every value ``candidate``
    returned (plain built-in values only); child 2 runs ``check`` alone against a candidate
    that replays those values in order. Only child 2, which runs no model code, decides.
    """
    if not entry_point.isidentifier():
        raise IcpoError(f"sandbox: {entry_point!r} is not a function name")
    limits = limits or Limits()
    record = run_job(
        {"mode": "record", "code": code, "func_name": entry_point, "test": test}, 10_000, limits
    )
    values = []
    for out in record.outcomes:
        if out is None or not out.ok:
            break
        values.append(dump(out.value))
    replay = run_job({"mode": "replay", "test": test, "values": values}, 1, limits)
    passed = replay.outcomes[0] is not None and replay.outcomes[0].ok
    record.outcomes = [replay.outcomes[0]]
    return passed, record
