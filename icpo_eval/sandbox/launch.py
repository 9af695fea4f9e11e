"""The kernel layer of the sandbox: start one child interpreter and collect what it reports.

Strong (where bubblewrap runs): the child (:mod:`icpo_eval.sandbox.child`, read here as text)
runs under ``bwrap --unshare-all --die-with-parent --new-session`` (see :func:`_bwrap_argv`):
its own user, pid, network, ipc, uts and cgroup namespaces, no capabilities, a read-only bind of
the Python prefix and the system libraries only, a private ``/proc`` and ``/dev``, a read-only
root, and a ``--tmpfs`` at :data:`SANDBOX_DIR` as its only writable place and working directory.
The project, tasks, caches, run store, home and the parent's processes do not exist inside.

Weak (no bwrap, no user namespaces, not Linux): a fresh host temporary directory, new network
(and, where allowed, user) namespaces via ``unshare``; the audit hook carries the rest.

Both: an empty environment, a new session, resource limits, output caps, and a wall-clock
deadline that kills the process group (under bwrap, the group of the outer ``bwrap``, whose death
takes the sandbox's pid namespace, and so every process the program left behind, with it).
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

#: The child's working directory under bwrap: a fresh tmpfs, its only writable place.
SANDBOX_DIR = "/sandbox"
_BWRAP_USERNS: list[bool] = []  # set by the probe: did bwrap get a user namespace?
_LIB_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32", "/lib", "/lib64", "/lib32")


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


def _python() -> str:
    """The interpreter the child runs: the real binary (a venv's ``python`` is a symlink)."""
    return os.path.realpath(sys.executable)


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


@lru_cache(maxsize=1)
def _bwrap_argv() -> tuple[str, ...] | None:
    """The bwrap command line (up to, not including, the program), or None where bwrap cannot
    run here. Probed once per process by running the interpreter under it."""
    exe = shutil.which("bwrap")
    if exe is None or not sys.platform.startswith("linux"):
        return None
    python = _python()
    binds: list[str] = []
    for path in (os.path.realpath(sys.base_prefix), os.path.dirname(python)):
        if path != "/" and os.path.isdir(path) and not _under(path, binds):
            binds.append(path)
    argv = [exe, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for path in binds:
        argv += ["--ro-bind", path, path]
    for path in _LIB_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path) and not _under(path, binds):
            argv += ["--ro-bind", path, path]
    base = {"base": sys.base_prefix, "platbase": sys.base_prefix}
    for key in ("purelib", "platlib"):  # the base interpreter's own site-packages: hidden
        path = os.path.realpath(sysconfig.get_path(key, vars=base))
        if os.path.isdir(path) and _under(path, binds) and path not in argv:
            argv += ["--tmpfs", path, "--remount-ro", path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", SANDBOX_DIR, "--chdir", SANDBOX_DIR]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--clearenv"]
    probe = "print(open('/proc/self/uid_map').read().split() != ['0', '0', '4294967295'])"
    try:
        proc = subprocess.run(
            [*argv, "--", python, "-I", "-S", "-B", "-c", probe],
            env={},
            stdin=subprocess.DEVNULL,
            timeout=10,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    if proc.returncode != 0:
        return None
    _BWRAP_USERNS.append(proc.stdout.strip() == b"True")
    return tuple(argv)


def strength() -> str:
    """``"strong"`` where the child runs under bubblewrap, ``"weak"`` where it falls back to
    unshare + rlimits + the audit hook (probed once per process)."""
    return "strong" if _bwrap_argv() is not None else "weak"


def _unshare(flags: int) -> None:
    if _libc().unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare failed")


def isolation() -> dict[str, bool]:
    """Which kernel isolation layers this machine grants (see the module docstring).

    ``bwrap``: the child runs under bubblewrap (then ``netns``, ``userns`` and ``pidns`` are
    bwrap's namespaces, and ``fs``: the host's files other than the Python prefix and system
    libraries do not exist inside). ``nproc``: RLIMIT_NPROC applies (not for root)."""
    if _bwrap_argv() is not None:
        userns = bool(_BWRAP_USERNS and _BWRAP_USERNS[0])
        layers = {"bwrap": True, "netns": True, "userns": userns, "pidns": True, "fs": True}
    else:
        flags = _namespace_flags()
        layers = {
            "bwrap": False,
            "netns": bool(flags & _CLONE_NEWNET),
            "userns": bool(flags & _CLONE_NEWUSER),
            "pidns": False,
            "fs": False,
        }
    return {**layers, "nproc": os.geteuid() != 0}


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
        # RLIMIT_FSIZE is set by the child itself, once it has written the job's input files
        # (which may be larger: they come from the parent).
        for res, value in (
            (resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1)),
            (resource.RLIMIT_AS, (limits.memory_mb * mb,) * 2),
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
    outcomes to expect, and ``files`` are written into the child's directory (by the stub,
    before the program loads).

    ``audit=False`` leaves the audit hook out; only tests use it, to show what the kernel layer
    stops on its own.
    """
    bwrap = _bwrap_argv()
    tmp = None if bwrap else os.path.realpath(tempfile.mkdtemp(prefix="icpo-sbx-"))
    proc: subprocess.Popen[bytes] | None = None
    r_fd = w_fd = -1
    job_file = None
    try:
        # The job (and the files of stdin mode) reach the child as job.json in its directory:
        # under bwrap copied onto its tmpfs from an unlinked host file (``--file``), otherwise
        # written into the host temporary directory. The child writes the files and removes it.
        job = {**job, "per_test_s": limits.per_test_s, "max_test_output": limits.max_test_output}
        job["audit"] = audit
        job["files"] = dict(files or {})
        job["file_mb"] = limits.file_mb
        data = json.dumps(job).encode("utf-8")
        if tmp is not None:
            os.chmod(tmp, 0o700)
            with open(os.path.join(tmp, "job.json"), "wb") as f:
                f.write(data)
        else:
            job_file = tempfile.TemporaryFile()
            job_file.write(data)
            job_file.flush()
            job_file.seek(0)
        flags = 0 if bwrap else _namespace_flags()
        nproc = None if os.geteuid() == 0 else _own_process_count() + limits.processes
        r_fd, w_fd = os.pipe()
        python = [_python(), "-I", "-S", "-B", "-X", "utf8", "-c", _child_source()]
        root = SANDBOX_DIR if bwrap else tmp
        assert root is not None
        child_args = [str(w_fd), root, json.dumps(list(_read_roots()))]
        pass_fds: tuple[int, ...] = (w_fd,)
        if bwrap:
            assert job_file is not None
            job_fd = job_file.fileno()
            # The tmpfs is host memory: sized for the job's files plus a few of the largest
            # files the program may write.
            size = 2 * len(data) + max(64, 4 * limits.file_mb) * 1024 * 1024
            at = len(bwrap) - 1 - bwrap[::-1].index("--tmpfs")  # the sandbox's own tmpfs
            sized = [*bwrap[:at], "--size", str(size), *bwrap[at:]]
            prefix = [*sized, "--file", str(job_fd), f"{SANDBOX_DIR}/job.json", "--"]
            argv = [*prefix, *python, *child_args]
            pass_fds = (w_fd, job_fd)
        else:
            argv = [*python, *child_args]
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=tmp or "/",
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,
            start_new_session=True,
            preexec_fn=_preexec(limits, flags, nproc),
        )
        os.close(w_fd)
        w_fd = -1
        if job_file is not None:
            job_file.close()
            job_file = None
        status, chunks = _collect(proc, r_fd, start, limits)
        try:
            # Anything the program left behind: the group of the child (or of the outer bwrap,
            # whose death takes the sandbox's pid namespace with it).
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        rc = proc.wait()
        wall = time.monotonic() - start
        if status is None:
            # bwrap exits 128 + n when the program died of signal n
            status = _exit_status(128 - rc if bwrap and 128 < rc < 160 else rc)
        result = parse_messages(b"".join(chunks["results"]), n_tests)
        result.status, result.returncode, result.wall_s = status, rc, wall
        result.stdout = b"".join(chunks["stdout"]).decode("utf-8", "replace")
        result.stderr = b"".join(chunks["stderr"]).decode("utf-8", "replace")
        layers = isolation()
        if not bwrap:
            layers["netns"] = bool(flags & _CLONE_NEWNET)
            layers["userns"] = bool(flags & _CLONE_NEWUSER)
        layers["nproc"] = nproc is not None
        result.isolation = layers
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
        if job_file is not None:
            job_file.close()
        if tmp is not None:
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
