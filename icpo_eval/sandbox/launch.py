"""The kernel layer of the sandbox: start one child interpreter and collect what it reports.

The child (:mod:`icpo_eval.sandbox.child`, read here as text) runs with an empty environment in
a fresh temporary directory, in a new session, in new network (and, where allowed, user)
namespaces, under resource limits; a wall-clock deadline and output caps kill its process group.
"""

from __future__ import annotations

import ctypes
import json
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
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files as package_files
from typing import Any

from icpo_eval.sandbox.results import SandboxResult, parse_messages

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


@lru_cache(maxsize=1)
def _child_source() -> str:
    """The child program's text, as the child interpreter gets it (never imported here)."""
    return package_files("icpo_eval.sandbox").joinpath("child.py").read_text(encoding="utf-8")


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


def run_job(
    job: dict[str, Any],
    n_tests: int,
    limits: Limits,
    files: dict[str, str] | None = None,
    *,
    audit: bool = True,
) -> SandboxResult:
    """Start one child running the stub on ``job``; collect its messages and outputs.

    The entry points (:func:`icpo_eval.sandbox.run_calls` and the others) build ``job``; this is
    the layer below them. ``job["mode"]`` is one of ``"calls"`` (with ``code``, ``func_name``,
    ``calls``), ``"stdin"`` (``code``, ``inputs``: names of ``files``), ``"record"`` (``code``,
    ``func_name``, ``test``) or ``"replay"`` (``test``, ``values``); ``n_tests`` is how many
    outcomes to expect, and ``files`` are written into the child's directory first.

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
        python = [sys.executable, "-I", "-S", "-B", "-X", "utf8", "-c", _child_source()]
        start = time.monotonic()
        proc = subprocess.Popen(
            [*python, str(w_fd), tmp, json.dumps(list(_read_roots()))],
            cwd=tmp,
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(w_fd,),
            start_new_session=True,
            preexec_fn=_preexec(limits, flags, nproc),
        )
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
        result = parse_messages(b"".join(chunks["results"]), n_tests)
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
