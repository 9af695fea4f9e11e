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
   runner stub with references to builtins it captured before the program loaded, and only
   exact builtin types are accepted (an object whose ``__eq__`` always says True is refused).
   HumanEval's ``check(candidate)`` holds its expected values in asserts, so it is run twice:
   once with the program, recording what ``candidate`` returned, and once in a second child
   *without* the program, replaying those values into ``check`` (see :func:`run_check`).
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
3. **The kernel**: a child process with an empty environment (no API keys) and a fresh
   temporary directory as working directory, in a new session (so a timeout kills the whole
   process group), in a new network namespace (and a user namespace where the kernel allows
   one) so that even a connection the hook missed has no network to reach, and with resource
   limits on CPU time, address space, file size, open files and core dumps (``RLIMIT_NPROC``
   too, except for root, which the kernel exempts from it). A wall-clock timeout kills the
   process group; output is read with a cap, beyond which the child is killed.

The stub runs every test of one answer in one child (one interpreter start, ~30-50 ms, per
answer, not per test), with a per-test timer; one test's infinite loop ends that test, and after
two timed-out tests the remaining call tests are skipped (failed) so that a looping answer costs
about two test timeouts, not one per test.
"""

from __future__ import annotations

import ast
import ctypes
import json
import math
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from icpo_eval.errors import IcpoError

__all__ = [
    "Limits",
    "Outcome",
    "SandboxResult",
    "isolation",
    "run_calls",
    "run_check",
    "run_stdin",
    "same_value",
]

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox run (all tests of one answer)."""

    wall_s: float = 20.0  # whole run, interpreter start included
    per_test_s: float = 4.0  # each test (a timer in the child; the wall clock backs it up)
    cpu_s: int = 20
    memory_mb: int = 1024  # address space
    file_mb: int = 16  # largest file the program may write
    open_files: int = 64
    processes: int = 64  # RLIMIT_NPROC headroom (not enforced by the kernel for root)
    max_output: int = 1_000_000  # bytes of the child's own stdout/stderr before it is killed
    max_results: int = 16_000_000  # bytes on the result channel before the child is killed
    max_test_output: int = 1_000_000  # bytes of one stdin-mode test's output kept


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
    #: Diagnostic only: the verdict comes from the replay (see :func:`run_check`).
    check_note: str | None = None


# --------------------------------------------------------------------------------------------
# The stub that runs in the child. Everything it needs after the program loads is captured in
# local variables first; the program cannot reach them without frames, which the hook blocks.
# --------------------------------------------------------------------------------------------

_STUB = r"""
def _main():
    import sys, os, json, io, signal, builtins
    rfd = int(sys.argv[1]); root = sys.argv[2]; read_roots = tuple(json.loads(sys.argv[3]))
    with open(root + "/job.json", encoding="utf-8") as f:
        job = json.load(f)
    os.remove(root + "/job.json")
    _write, _type, _repr, _len, _str, _int, _bytes = os.write, type, repr, len, str, int, bytes
    _float, _bool, _list, _tuple = float, bool, list, tuple
    _dict, _set, _frozenset = dict, set, frozenset
    _complex, _none = complex, type(None)
    _frepr, _join, _starts, _split = float.__repr__, str.join, str.startswith, str.split
    _bdecode, _encode, _exec, _compile = bytes.decode, str.encode, exec, compile
    _BaseException, _SystemExit, _PermissionError, _ValueError = (
        BaseException, SystemExit, PermissionError, ValueError)
    _setitimer, _ITIMER_REAL = signal.setitimer, signal.ITIMER_REAL
    _open, _dup2, _close = os.open, os.dup2, os.close
    _O_RDONLY, _O_WFLAGS = os.O_RDONLY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    _textopen, _sorted, _enumerate, _getattr, _callable = open, sorted, enumerate, getattr, callable

    def emit(text):
        data = _encode(text + "\n", "utf-8", "surrogatepass")
        try:
            while data:
                data = data[_write(rfd, data):]
        except OSError:
            pass

    def norm(p):
        t = _type(p)
        if t is _bytes:
            p = _bdecode(p, "utf-8", "surrogateescape")
        elif t is not _str:
            return None
        if not _starts(p, "/"):
            p = root + "/" + p
        out = []
        for part in _split(p, "/"):
            if part == "" or part == ".":
                continue
            if part == "..":
                if out:
                    out.pop()
                continue
            out.append(part)
        return "/" + _join("/", out)

    def under(p, bases):
        for b in bases:
            if p == b or _starts(p, b + "/"):
                return True
        return False

    blocked = frozenset((
        "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system",
        "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill",
        "os.chdir", "os.chroot", "os.symlink", "os.link", "sys.settrace", "sys.setprofile",
        "sys._current_frames", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "resource.setrlimit", "resource.prlimit", "code.__new__", "function.__new__",
        "os.setuid", "os.setgid", "webbrowser.open", "os.startfile",
    ))
    blocked_prefix = ("ctypes.", "socket.", "_winapi.", "winreg.", "msvcrt.", "syslog.")
    blocked_imports = frozenset((
        "ctypes", "_ctypes", "_xxsubinterpreters", "_testcapi",
        "_testinternalcapi", "_testmultiphase", "_tkinter",
    ))
    frame_attrs = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"))
    code_attrs = frozenset(("__code__",))
    write_events = frozenset((
        "os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.truncate", "os.chmod",
        "os.chown", "os.utime", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr",
        "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
        "shutil.copytree", "shutil.move", "shutil.make_archive", "shutil.chown",
    ))
    read_events = frozenset(("os.listdir", "os.scandir", "os.getxattr", "os.listxattr"))
    here = (root,)

    def deny(event, exc=_PermissionError, log=True):
        if log:
            emit("('violation', %s)" % _repr(_str(event)))
        raise exc("blocked by the icpo-eval sandbox: " + _str(event))

    # _posixsubprocess.fork_exec starts processes without an audit event of its own. It is
    # imported now and disarmed; importing it afresh (after deleting it from sys.modules, or
    # with sys.modules replaced) is refused below, so the original never comes back.
    import _posixsubprocess as psp

    def no_fork_exec(*args, **kwargs):
        deny("_posixsubprocess.fork_exec")

    psp.fork_exec = no_fork_exec
    _sys, _dict_get = sys, dict.get

    def hook(event, args):
        if event in blocked or _starts(event, blocked_prefix):
            deny(event)
        if event == "sys._getframe":
            deny(event, _ValueError, False)  # namedtuple, typing catch ValueError: not logged
        if event == "import":
            top = _split(args[0], ".")[0]
            if top in blocked_imports:
                deny("import " + args[0])
            if top == "_posixsubprocess":
                mods = _sys.modules
                if _type(mods) is not _dict or _dict_get(mods, "_posixsubprocess") is not psp:
                    deny("import " + args[0])
            return
        if event == "object.__getattr__":
            if args[1] in frame_attrs:
                deny("getattr " + args[1])
            return
        if event == "object.__setattr__":
            if args[1] in code_attrs:
                deny("setattr " + args[1])
            return
        if event == "open":
            path, mode = args[0], args[1]
            if _type(path) is _int:
                return
            p = norm(path)
            if p is None:
                deny("open of a path that is not str or bytes")
            if under(p, here):
                return
            reading = _type(mode) is _str and not (
                "w" in mode or "a" in mode or "x" in mode or "+" in mode)
            if not reading or not under(p, read_roots):
                deny("open " + p)
            return
        if event in write_events or event in read_events:
            for a in args[:2]:
                if a is None or _type(a) is _int:
                    continue
                p = norm(a)
                if p is None:
                    deny(event + " of a path that is not str or bytes")
                if not under(p, here) and (event in write_events or not under(p, read_roots)):
                    deny(event + " " + p)

    class _Timeout(_BaseException):
        pass

    def on_alarm(signum, frame):
        raise _Timeout()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails instead of killing

    def ser(v, depth=0):
        if depth > 200:
            raise _ValueError("value nested too deeply")
        t = _type(v)
        if t is _int or t is _str or t is _bytes or t is _bool or t is _none or t is _complex:
            return _repr(v)
        if t is _float:
            r = _frepr(v)
            return r if r not in ("nan", "inf", "-inf") else "float('" + r + "')"
        if t is _list:
            return "[" + _join(",", [ser(x, depth + 1) for x in v]) + "]"
        if t is _tuple:
            return "(" + _join(",", [ser(x, depth + 1) for x in v]) + ",)"
        if t is _dict:
            items = [ser(k, depth + 1) + ":" + ser(x, depth + 1) for k, x in v.items()]
            return "{" + _join(",", items) + "}"
        if t is _set or t is _frozenset:
            inner = "{" + _join(",", [ser(x, depth + 1) for x in v]) + "}" if v else "()"
            return ("set(" if t is _set else "frozenset(") + inner + ")"
        raise TypeError("result of type %s is not a plain built-in value" % t.__name__)

    def describe(e):
        try:
            name = _type(e).__name__
            if _type(name) is not _str:
                name = "Exception"
        except _BaseException:
            name = "Exception"
        try:
            msg = _str(e)
            if _type(msg) is not _str:
                msg = ""
        except _BaseException:
            msg = ""
        return _repr((name + ": " + msg)[:300])

    per_test = _float(job.get("per_test_s", 4.0))
    max_out = _int(job.get("max_test_output", 1000000))
    mode = job["mode"]

    def timed(fn):
        _setitimer(_ITIMER_REAL, per_test)
        try:
            return fn()
        finally:
            _setitimer(_ITIMER_REAL, 0)

    timeouts = [0]  # after two timed-out tests the rest are skipped (they count as failed)

    def result(i, fn):
        if timeouts[0] >= 2:
            emit("('result', %d, 'error', 'Skipped: earlier tests timed out')" % i)
            return
        try:
            v = timed(fn)
            emit("('result', %d, 'ok', %s)" % (i, ser(v)))
        except _Timeout:
            timeouts[0] += 1
            emit("('result', %d, 'error', 'Timeout: test exceeded %s s')" % (i, per_test))
        except _BaseException as e:
            emit("('result', %d, 'error', %s)" % (i, describe(e)))

    code = None
    if mode != "replay":
        try:
            code = _compile(job["code"], "<solution>", "exec")
        except _BaseException as e:
            emit("('loaded', 'error', %s)" % describe(e))
            return
    sys.stdin = io.StringIO("")
    if job.get("audit", True):
        sys.addaudithook(hook)
    emit("('ready',)")

    if mode == "replay":  # trusted: no model code in this child (see run_check)
        env = {"__builtins__": {}, "float": _float, "set": _set, "frozenset": _frozenset}
        values = [eval(t, env) for t in job["values"]]
        calls = [0]

        def replay(*args, **kwargs):
            if calls[0] >= len(values):
                raise AssertionError("candidate called more often than when recorded")
            calls[0] += 1
            return values[calls[0] - 1]

        tns = {"__name__": "__test__"}
        try:
            exec(compile(job["test"], "<test>", "exec"), tns)
            timed(lambda: tns["check"](replay))
            emit("('result', 0, 'ok', True)")
        except BaseException as e:
            emit("('result', 0, 'error', %s)" % describe(e))
        return


    def redirect(path, flags, target):
        fd = _open(path, flags, 0o600)  # the program may have closed target (open(0) does)
        if fd != target:
            _dup2(fd, target)
            _close(fd)

    if mode == "stdin":
        for i, name in _enumerate(job["inputs"]):
            out_path = root + "/out_" + _str(i)
            g = {"__name__": "__main__", "__builtins__": builtins}
            redirect(root + "/" + name, _O_RDONLY, 0)
            redirect(out_path, _O_WFLAGS, 1)
            sys.stdin = _textopen(0, "r", encoding="utf-8", closefd=False)
            sys.stdout = _textopen(1, "w", encoding="utf-8", closefd=False)
            status, err = "ok", "None"
            try:
                timed(lambda: _exec(code, g))
            except _SystemExit as e:
                if e.code not in (None, 0):
                    status, err = "error", describe(e)
            except _Timeout:
                status, err = "error", "'Timeout: test exceeded %s s'" % per_test
            except _BaseException as e:
                status, err = "error", describe(e)
            try:
                sys.stdout.flush()
            except _BaseException:
                pass
            with _textopen(out_path, "rb") as f:
                data = f.read(max_out + 1)
            if _len(data) > max_out:
                status, err = "error", "'OutputLimit: more than %d bytes'" % max_out
            text = _bdecode(data, "utf-8", "replace")
            if status == "ok":
                emit("('result', %d, 'ok', %s)" % (i, _repr(text)))
            else:
                emit("('result', %d, 'error', %s)" % (i, err))
        return

    ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        timed(lambda: _exec(code, ns))
    except _BaseException as e:
        emit("('loaded', 'error', %s)" % describe(e))
        return
    fname = job["func_name"]
    fn = ns.get(fname)
    if not _callable(fn) and _callable(ns.get("Solution")):
        try:
            fn = _getattr(ns["Solution"](), fname)  # LeetCode style: class Solution
        except _BaseException:
            fn = None
    if not _callable(fn):
        emit("('loaded', 'error', %s)" % _repr("NameError: no function named " + fname))
        return
    emit("('loaded', 'ok')")

    if mode == "calls":
        for i, args in _enumerate(job["calls"]):
            result(i, lambda: fn(*args))
        return

    if mode == "record":
        tns = {"__name__": "__test__"}
        calls = [0]
        log = []

        def candidate(*args, **kwargs):
            v = fn(*args, **kwargs)
            text = ser(v)  # raises for anything but plain built-in values
            log.append(text)
            emit("('result', %d, 'ok', %s)" % (_len(log) - 1, text))
            return v

        try:
            _exec(_compile(job["test"], "<test>", "exec"), tns)
            timed(lambda: tns["check"](candidate))
            emit("('checked', 'ok')")
        except _Timeout:
            emit("('checked', 'Timeout')")
        except _BaseException as e:
            emit("('checked', %s)" % describe(e))


_main()
"""


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


@lru_cache(maxsize=1)
def _namespace_flags() -> int:
    """The strongest unshare() flags this kernel grants us, probed once in a throwaway child.

    A user namespace (where allowed) drops every capability the child had outside it; a network
    namespace leaves the child with an unconfigured loopback and no route anywhere. Containers
    often forbid one or both, so each is optional and the audit hook blocks sockets regardless.
    """
    for flags in (_CLONE_NEWUSER | _CLONE_NEWNET, _CLONE_NEWNET):
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-S", "-c", "pass"],
                preexec_fn=lambda f=flags: _unshare(f),
                env={},
                timeout=10,
                capture_output=True,
            )
        except (subprocess.SubprocessError, OSError):
            continue
        if proc.returncode == 0:
            return flags
    return 0


def _unshare(flags: int) -> None:
    if _libc().unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare failed")


def isolation() -> dict[str, bool]:
    """Which kernel isolation layers this machine grants (see the module docstring)."""
    flags = _namespace_flags()
    return {
        "netns": bool(flags & _CLONE_NEWNET),
        "userns": bool(flags & _CLONE_NEWUSER),
        "nproc": os.geteuid() != 0,
    }


def _own_process_count() -> int:
    """Processes (and threads) of our uid now: RLIMIT_NPROC counts them all, so the child's
    limit is this plus the headroom in :class:`Limits`."""
    uid, n = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                pass
    return n


@lru_cache(maxsize=1)
def _read_roots() -> tuple[str, ...]:
    """What the program may read besides its directory: the standard library only."""
    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if k in paths}
    roots |= {"/dev/null", "/dev/urandom", "/dev/zero"}
    return tuple(sorted(roots))


def _preexec(limits: Limits, flags: int, nproc: int | None) -> Any:
    def setup() -> None:
        if flags:
            _unshare(flags)
        mb = 1024 * 1024
        for res, value in (
            (resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1)),
            (resource.RLIMIT_AS, (limits.memory_mb * mb,) * 2),
            (resource.RLIMIT_FSIZE, (limits.file_mb * mb,) * 2),
            (resource.RLIMIT_NOFILE, (limits.open_files,) * 2),
            (resource.RLIMIT_CORE, (0, 0)),
        ):
            resource.setrlimit(res, value)
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return setup


def _run(
    job: dict[str, Any],
    n_tests: int,
    limits: Limits,
    files: dict[str, str] | None = None,
    *,
    audit: bool = True,
) -> SandboxResult:
    """Start one child running the stub on ``job``; collect its messages and outputs.

    ``audit=False`` leaves the audit hook out; only tests use it, to show what the kernel layer
    stops on its own.
    """
    tmp = os.path.realpath(tempfile.mkdtemp(prefix="icpo-sbx-"))
    proc: subprocess.Popen[bytes] | None = None
    r_fd = w_fd = -1
    try:
        os.chmod(tmp, 0o700)
        job = {**job, "per_test_s": limits.per_test_s, "max_test_output": limits.max_test_output}
        job["audit"] = audit
        with open(os.path.join(tmp, "job.json"), "w", encoding="utf-8") as f:
            json.dump(job, f)
        for name, text in (files or {}).items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(text)
        flags = _namespace_flags()
        nproc = None if os.geteuid() == 0 else _own_process_count() + limits.processes
        r_fd, w_fd = os.pipe()
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-X", "utf8", "-c", _STUB, str(w_fd), tmp,
             json.dumps(list(_read_roots()))],
            cwd=tmp,
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(w_fd,),
            start_new_session=True,
            preexec_fn=_preexec(limits, flags, nproc),
        )  # fmt: skip
        os.close(w_fd)
        w_fd = -1
        status, chunks = _collect(proc, r_fd, start, limits)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything the program left behind
        except (ProcessLookupError, PermissionError):
            pass
        rc = proc.wait()
        wall = time.monotonic() - start
        if status is None:
            status = _exit_status(rc)
        result = _parse_messages(b"".join(chunks["results"]), n_tests)
        result.status, result.returncode, result.wall_s = status, rc, wall
        result.stdout = b"".join(chunks["stdout"]).decode("utf-8", "replace")
        result.stderr = b"".join(chunks["stderr"]).decode("utf-8", "replace")
        result.isolation = {
            "netns": bool(flags & _CLONE_NEWNET),
            "userns": bool(flags & _CLONE_NEWUSER),
            "nproc": nproc is not None,
        }
        return result
    finally:
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        for fd in (r_fd, w_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


def _collect(
    proc: subprocess.Popen[bytes], r_fd: int, start: float, limits: Limits
) -> tuple[str | None, dict[str, list[bytes]]]:
    """Read stdout, stderr and the result channel until all close, a cap or the deadline."""
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", r_fd: "results"}
    caps = {"stdout": limits.max_output, "stderr": limits.max_output}
    caps["results"] = limits.max_results
    chunks: dict[str, list[bytes]] = {k: [] for k in caps}
    sizes = dict.fromkeys(caps, 0)
    for fd in names:
        sel.register(fd, selectors.EVENT_READ)
    status = None
    deadline = start + limits.wall_s
    try:
        while names:
            left = deadline - time.monotonic()
            if left <= 0:
                status = "timeout"
                break
            for key, _ in sel.select(timeout=left):
                fd = key.fd
                data = os.read(fd, 65536)
                if not data:
                    sel.unregister(fd)
                    del names[fd]
                    continue
                name = names[fd]
                keep = data[: max(0, caps[name] - sizes[name])]
                chunks[name].append(keep)
                sizes[name] += len(data)
                if sizes[name] > caps[name]:
                    status = "output_limit"
            if status:
                break
    finally:
        sel.close()
    if status is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return status, chunks


def _exit_status(rc: int) -> str:
    if rc == 0:
        return "ok"
    if rc > 0:
        return f"exit:{rc}"
    sig = -rc
    if sig == signal.SIGXCPU:
        return "cpu_limit"
    try:
        return f"killed:{signal.Signals(sig).name}"
    except ValueError:
        return f"killed:{sig}"


def _parse_messages(data: bytes, n_tests: int) -> SandboxResult:
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
            msg = _literal(line)
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


def _literal(text: str) -> Any:
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


def _dump(v: Any) -> str:
    """Python source of a value :func:`_literal` built (so: plain built-in types only)."""
    t = type(v)
    if t is float:
        r = repr(v)
        return f"float('{r}')" if r in _NAMED_FLOATS else r
    if t is list:
        return "[" + ",".join(_dump(x) for x in v) + "]"
    if t is tuple:
        return "(" + ",".join(_dump(x) for x in v) + ",)"
    if t is dict:
        return "{" + ",".join(_dump(k) + ":" + _dump(x) for k, x in v.items()) + "}"
    if t in (set, frozenset):
        inner = "{" + ",".join(_dump(x) for x in v) + "}" if v else "()"
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


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


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
    return _run(job, len(calls), limits or Limits())


def run_stdin(code: str, inputs: list[str], limits: Limits | None = None) -> SandboxResult:
    """Run ``code`` as a program once per input (given on stdin); ``outcomes[i].value`` is the
    text it wrote to stdout."""
    files = {f"in_{i}": text for i, text in enumerate(inputs)}
    job = {"mode": "stdin", "code": code, "inputs": list(files)}
    return _run(job, len(inputs), limits or Limits(), files)


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
    record = _run(
        {"mode": "record", "code": code, "func_name": entry_point, "test": test}, 10_000, limits
    )
    values = []
    for out in record.outcomes:
        if out is None or not out.ok:
            break
        values.append(_dump(out.value))
    replay = _run({"mode": "replay", "test": test, "values": values}, 1, limits)
    passed = replay.outcomes[0] is not None and replay.outcomes[0].ok
    record.outcomes = [replay.outcomes[0]]
    return passed, record
