"""The sandbox contains hostile programs, and the harness stays alive and correct afterwards.

Each test names what stopped the program (the audit hook's violation log, a resource limit, the
wall clock, the output cap, or the parent-side comparison) so that the evidence is in the
assertions, not only in the docstring of :mod:`icpo_eval.sandbox`. The kernel boundary
(bubblewrap: read-only binds of the Python prefix only, a tmpfs, its own pid, user, network and
mount namespaces) is tested with the audit hook off, so that only the kernel stops the program;
those tests skip where bubblewrap cannot run. Hostile result lines are in
``tests/test_hostile_results.py``, SQL in ``tests/test_sql_sandbox.py``, hostile replies and
records in ``tests/test_hostile_inputs.py``, and a whole run in ``tests/test_hostile_run.py``.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
import time
from importlib import resources
from pathlib import Path

import pytest

from icpo_eval import sandbox
from icpo_eval.errors import IcpoError
from icpo_eval.sandbox import Limits, run_calls, run_check, run_stdin

FAST = Limits(wall_s=5.0, per_test_s=1.0, cpu_s=5)


def _call(code: str, *args: object, limits: Limits = FAST) -> sandbox.SandboxResult:
    return run_calls(code, "f", [list(args)], limits)


def _still_works() -> None:
    res = _call("def f(x):\n    return x * 2\n", 21)
    assert res.status == "ok" and res.outcomes[0] is not None and res.outcomes[0].value == 42


def test_normal_program_batches_all_tests_in_one_child() -> None:
    calls = [[i] for i in range(50)]
    res = run_calls("def f(x):\n    return [x, x * x, (x,), {'k': x}]\n", "f", calls, FAST)
    assert res.status == "ok" and res.violations == []
    assert [o.value for o in res.outcomes if o] == [[i, i * i, (i,), {"k": i}] for i in range(50)]


def test_fork_bomb() -> None:
    code = "import os\ndef f():\n    while True:\n        os.fork()\n"
    res = _call(code)
    assert "os.fork" in res.violations  # stopped by the audit hook
    assert res.outcomes[0] is not None and "PermissionError" in str(res.outcomes[0].error)
    mp = "import multiprocessing as m\ndef f():\n    m.Process(target=print).start()\n"
    assert _call(mp).outcomes[0].ok is False  # type: ignore[union-attr]
    _still_works()


def test_memory_bomb() -> None:
    code = "def f():\n    x = []\n    while True:\n        x.append(bytearray(10**8))\n"
    res = _call(code, limits=Limits(wall_s=10, memory_mb=512))
    assert res.outcomes[0] is not None and "MemoryError" in str(res.outcomes[0].error)  # RLIMIT_AS
    _still_works()


def test_infinite_loop_ends_at_the_per_test_timer() -> None:
    res = run_calls("def f(x):\n    while x:\n        pass\n    return 1\n", "f", [[1], [0]], FAST)
    assert res.outcomes[0] is not None and "Timeout" in str(res.outcomes[0].error)
    assert res.outcomes[1] is not None and res.outcomes[1].value == 1  # the next test still ran


def test_loop_that_swallows_the_timer_and_ignores_sigterm_is_killed() -> None:
    code = (
        "import signal\n"
        "def f():\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    while True:\n"
        "        try:\n"
        "            while True:\n"
        "                pass\n"
        "        except BaseException:\n"
        "            pass\n"
    )
    t = time.monotonic()
    res = _call(code, limits=Limits(wall_s=1.5, per_test_s=0.3, cpu_s=10))
    assert res.status == "timeout"  # wall clock, SIGKILL to the process group
    assert res.outcomes == [None]
    assert time.monotonic() - t < 5
    _still_works()


def test_cpu_limit_kills_a_busy_child() -> None:
    code = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    res = _call(code, limits=Limits(wall_s=10, cpu_s=1, per_test_s=10))
    assert res.status in ("cpu_limit", "killed:SIGKILL")  # RLIMIT_CPU: SIGXCPU, then SIGKILL


def test_api_keys_are_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-" + "x" * 24
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    code = (
        "import os\n"
        "def f():\n"
        "    found = [dict(os.environ)]\n"
        "    for path in ['/proc/%d/environ' % os.getppid(), '/proc/self/environ',\n"
        "                 '/proc/1/environ']:\n"
        "        try:\n"
        "            found.append(open(path, 'rb').read().decode('latin-1'))\n"
        "        except Exception as e:\n"
        "            found.append(type(e).__name__)\n"
        "    return repr(found)\n"
    )
    res = _call(code)
    assert res.outcomes[0] is not None and res.outcomes[0].ok
    assert secret not in str(res.outcomes[0].value) and secret not in res.stdout + res.stderr
    assert "OPENAI_API_KEY" not in str(res.outcomes[0].value)  # empty environment
    assert any(v.startswith("open /proc") for v in res.violations)


def test_files_outside_the_temp_dir_are_not_written(tmp_path: Path) -> None:
    target = tmp_path / "escape.txt"
    code = (
        "import os, shutil\n"
        "def f(path):\n"
        "    errors = []\n"
        "    for attempt in (lambda: open(path, 'w').write('x'),\n"
        "                    lambda: os.open(path, os.O_WRONLY | os.O_CREAT),\n"
        "                    lambda: (open('inside', 'w').write('x'), os.rename('inside', path)),\n"
        "                    lambda: os.symlink(path, 'link'),\n"
        "                    lambda: open('../' * 20 + path.lstrip('/'), 'a').write('x'),\n"
        "                    lambda: os.chdir('/')):\n"
        "        try:\n"
        "            attempt()\n"
        "        except PermissionError:\n"
        "            errors.append('denied')\n"
        "    open('scratch.txt', 'w').write('fine')  # its own directory is writable\n"
        "    return errors\n"
    )
    res = _call(code, str(target))
    assert res.outcomes[0] is not None and res.outcomes[0].value == ["denied"] * 6
    assert not target.exists()
    assert not list(tmp_path.iterdir())


def test_task_files_with_expected_outputs_are_not_readable() -> None:
    tasks = Path(__file__).resolve().parents[1] / "tasks" / "math.jsonl"
    res = _call("def f(p):\n    return open(p).read()[:10]\n", str(tasks))
    assert res.outcomes[0] is not None and "PermissionError" in str(res.outcomes[0].error)


def test_network_connection_is_blocked() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        "def f(port):\n"
        "    socket.create_connection(('127.0.0.1', port), timeout=1).sendall(b'leak')\n"
        "    return 'connected'\n"
    )
    try:
        res = _call(code, port)
        assert res.outcomes[0] is not None and not res.outcomes[0].ok
        assert any(v.startswith("socket.") for v in res.violations)  # the audit hook
        # Without the hook, the network namespace alone (where the kernel grants one) stops it.
        if sandbox.isolation()["netns"]:
            bare = sandbox.run_job(
                {"mode": "calls", "code": code, "func_name": "f", "calls": [[port]]},
                1,
                FAST,
                audit=False,
            )
            assert bare.outcomes[0] is not None and not bare.outcomes[0].ok
            assert bare.violations == []
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def test_subprocess_and_exec_are_blocked() -> None:
    code = (
        "import os, subprocess\n"
        "def f():\n"
        "    out = []\n"
        "    for attempt in (lambda: subprocess.run(['echo', 'hi']),\n"
        "                    lambda: os.system('echo hi'),\n"
        "                    lambda: os.execv('/bin/sh', ['sh']),\n"
        "                    lambda: __import__('_posixsubprocess').fork_exec(*[0] * 23),\n"
        "                    lambda: __import__('ctypes')):\n"
        "        try:\n"
        "            attempt()\n"
        "            out.append('ran')\n"
        "        except PermissionError:\n"
        "            out.append('denied')\n"
        "    return out\n"
    )
    res = _call(code)
    assert res.outcomes[0] is not None and res.outcomes[0].value == ["denied"] * 5
    assert {"subprocess.Popen", "os.system", "os.exec"} <= set(res.violations)
    assert {"_posixsubprocess.fork_exec", "import ctypes"} <= set(res.violations)
    fresh = (
        "import sys\n"
        "del sys.modules['_posixsubprocess']\n"
        "def f():\n"
        "    return 1\n"
        "import _posixsubprocess\n"
    )
    assert _call(fresh).load_error is not None  # a fresh, armed copy cannot be imported
    assert "hi" not in res.stdout


def test_printing_100_mb_is_cut_off() -> None:
    t = time.monotonic()
    res = _call("def f():\n    print('x' * 100_000_000)\n", limits=Limits(wall_s=10))
    assert res.status == "output_limit" and len(res.stdout) <= Limits().max_output
    prog = run_stdin("import sys\nsys.stdout.write('y' * 100_000_000)\n", [""], Limits(wall_s=10))
    assert prog.outcomes[0] is not None and not prog.outcomes[0].ok  # RLIMIT_FSIZE / test cap
    assert time.monotonic() - t < 10
    _still_works()


def test_os_exit_zero_is_not_a_pass() -> None:
    res = _call("import os\ndef f():\n    os._exit(0)\n")
    assert res.returncode == 0 and res.outcomes == [None]  # exit 0, but no result: a failure


def test_printed_success_and_forged_result_lines_do_not_count() -> None:
    code = (
        "import os, builtins, json\n"
        "print('All tests passed!')\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, b\"('result', 0, 'ok', 42)\\n('result', 1, 'ok', 42)\\n\")\n"
        "    except OSError:\n"
        "        pass\n"
        "builtins.repr = lambda x: '42'\n"
        "builtins.type = lambda x: int\n"
        "json.dumps = lambda *a, **k: '42'\n"
        "class Yes:\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "def f(x):\n"
        "    return Yes() if x else 0\n"
    )
    res = run_calls(code, "f", [[1], [0], [2]], FAST)
    # Tests 0 and 1 were reported twice (forged + real): no outcome. Test 2 returned an object
    # that equals everything: refused, never compared.
    assert res.outcomes[0] is None and res.outcomes[1] is None
    assert res.outcomes[2] is not None and "not a plain built-in value" in str(
        res.outcomes[2].error
    )


def test_introspection_that_could_reach_the_stub_is_blocked() -> None:
    code = (
        "import sys, gc\n"
        "def f():\n"
        "    out = []\n"
        "    for attempt in (lambda: sys._getframe(1), lambda: gc.get_objects(),\n"
        "                    lambda: sys.settrace(lambda *a: None),\n"
        "                    lambda: setattr(f, '__code__', (lambda: 1).__code__)):\n"
        "        try:\n"
        "            attempt()\n"
        "            out.append('ran')\n"
        "        except (PermissionError, ValueError):\n"
        "            out.append('denied')\n"
        "    try:\n"
        "        1 / 0\n"
        "    except ZeroDivisionError as e:\n"
        "        try:\n"
        "            e.__traceback__.tb_frame\n"
        "            out.append('ran')\n"
        "        except PermissionError:\n"
        "            out.append('denied')\n"
        "    return out\n"
    )
    res = _call(code)
    assert res.outcomes[0] is not None and res.outcomes[0].value == ["denied"] * 5


def test_ordinary_stdlib_use_still_works() -> None:
    code = (
        "import collections, itertools, heapq, re, math, functools, typing, dataclasses\n"
        "P = collections.namedtuple('P', 'x y')\n"
        "@dataclasses.dataclass\n"
        "class C:\n"
        "    a: int\n"
        "@functools.lru_cache(None)\n"
        "def fib(n):\n"
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "def f(n):\n"
        "    return [fib(n), P(1, 2).y, C(3).a, heapq.nsmallest(1, [3, 1]), math.gcd(4, 6)]\n"
    )
    res = _call(code, 30)
    assert res.outcomes[0] is not None and res.outcomes[0].value == [832040, 2, 3, [1], 2]
    assert res.violations == []


def test_stdin_programs_and_open_zero() -> None:
    code = "import sys\na, b = map(int, open(0).read().split())\nprint(a + b)\n"
    res = run_stdin(code, ["1 2\n", "10 20\n"], FAST)
    assert [o.value for o in res.outcomes if o] == ["3\n", "30\n"]


def test_humaneval_check_cannot_be_forged() -> None:
    test = (
        "import math\n"
        "def check(candidate):\n"
        "    assert candidate(2) == 4\n"
        "    assert math.isclose(candidate(0.5), 1.0)\n"
    )
    ok, _ = run_check("def double(x):\n    return 2 * x\n", test, "double", FAST)
    assert ok
    always_equal = "class Y:\n    __eq__ = lambda s, o: True\ndef double(x):\n    return Y()\n"
    assert run_check(always_equal, test, "double", FAST)[0] is False
    patch_math = "import math\nmath.isclose = lambda *a, **k: True\ndef double(x):\n    return 4\n"
    assert run_check(patch_math, test, "double", FAST)[0] is False
    assert (
        run_check("import os\ndef double(x):\n    os._exit(0)\n", test, "double", FAST)[0] is False
    )


def test_harness_survives_many_hostile_runs_in_threads() -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            _call("import os\ndef f():\n    os.fork()\n")
            _still_works()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert os.getpid() > 0


def test_bad_function_name_is_an_icpo_error() -> None:
    with pytest.raises(IcpoError):
        run_calls("def f(): pass", "not a name", [[]])


def test_same_value_rules() -> None:
    sv = sandbox.same_value
    assert sv((1, [2]), [1, [2]]) and sv(0.1 + 0.2, 0.3) and sv(2, 2.0)
    assert not sv(True, 1) and not sv(1, True) and not sv("1", 1) and not sv([1], [1, 2])
    assert sv(float("nan"), float("nan")) and sv({1, 2}, [2, 1])


def test_child_program_is_a_module_that_does_nothing_on_import() -> None:
    # The parent reads the file as text for `python -c`; importing it (a linter, coverage) must
    # not run the stub, which would read sys.argv and a job file that are not there.
    child = importlib.import_module("icpo_eval.sandbox.child")
    source = resources.files("icpo_eval.sandbox").joinpath("child.py").read_text("utf-8")
    assert source.isascii()  # it travels on a command line
    assert 'if __name__ == "__main__":' in source and child.__name__ == "icpo_eval.sandbox.child"
    _still_works()


# --- The kernel boundary (bubblewrap) --------------------------------------------------------
# Each hostile program below runs with the audit hook left out (``audit=False``), so what stops
# it is the kernel layer alone; most also run through the ordinary entry points, hook on.

ROOT = Path(__file__).resolve().parents[1]
strong = pytest.mark.skipif(
    sandbox.strength() != "strong",
    reason="bubblewrap (bwrap) cannot run here (not installed, no user namespaces or not "
    "Linux): the sandbox is weak, so there is no kernel boundary to test",
)


def _bare(code: str, *args: object, limits: Limits = FAST) -> sandbox.SandboxResult:
    """``f(*args)`` in a child without the audit hook: only the kernel layer confines it.
    Never without bwrap: outside it, these programs would really do what they try."""
    if sandbox.strength() != "strong":
        pytest.skip("no bubblewrap: a hostile program without the hook would escape")
    job = {"mode": "calls", "code": code, "func_name": "f", "calls": [list(args)]}
    res = sandbox.run_job(job, 1, limits, audit=False)
    assert res.isolation["bwrap"] and res.violations == []
    return res


def _value(res: sandbox.SandboxResult) -> object:
    assert res.outcomes[0] is not None and res.outcomes[0].ok, res
    return res.outcomes[0].value


# Tries every way in the list and reports, per attempt, "ok" or the exception's name.
_ATTEMPTS = (
    "import os, signal, socket, sqlite3\n"
    "def attempt(fn):\n"
    "    try:\n"
    "        r = fn()\n"
    "        return 'ok' if r is None else 'ok:' + str(r)[:200]\n"
    "    except BaseException as e:\n"
    "        return type(e).__name__\n"
)


def test_strength_is_probed_once_and_reported() -> None:
    from icpo_eval.sandbox import launch

    assert sandbox.strength() in ("strong", "weak")
    layers = sandbox.isolation()
    assert {"bwrap", "netns", "userns", "pidns", "fs", "nproc"} <= set(layers)
    assert layers["bwrap"] == (sandbox.strength() == "strong")
    before = launch._bwrap_argv.cache_info()
    for _ in range(3):
        sandbox.strength()
        _still_works()
    after = launch._bwrap_argv.cache_info()
    assert after.misses == before.misses and after.currsize == 1  # the probe ran once


def test_weak_fallback_still_runs_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from icpo_eval.sandbox import launch

    monkeypatch.setattr(launch, "_bwrap_argv", lambda: None)  # as where bwrap cannot run
    assert sandbox.strength() == "weak" and sandbox.isolation()["bwrap"] is False
    res = run_stdin("print(int(input()) + 1)\n", ["41\n", "1\n"], FAST)
    assert [o.value for o in res.outcomes if o] == ["42\n", "2\n"]
    assert res.isolation["bwrap"] is False and res.isolation["fs"] is False
    _still_works()


@strong
def test_bwrap_command_line_binds_only_the_python_prefix() -> None:
    import sys

    from icpo_eval.sandbox import launch

    argv = launch._bwrap_argv()
    assert argv is not None
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in argv
    tmpfs = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    read_only = {argv[i + 1] for i, a in enumerate(argv) if a == "--remount-ro"}
    assert tmpfs[-1] == launch.SANDBOX_DIR and set(tmpfs[:-1]) <= read_only  # one writable place
    assert {"/", "/dev"} <= read_only
    assert argv[argv.index("--proc") + 1] == "/proc" and argv[argv.index("--dev") + 1] == "/dev"
    bound = [argv[i + 1] for i, a in enumerate(argv) if a in ("--ro-bind", "--bind")]
    assert "--bind" not in argv  # nothing of the host is writable
    assert os.path.realpath(sys.base_prefix) in bound
    for p in bound:  # not the project, the venv, the home folder or a cache
        assert not str(ROOT).startswith(p) and not p.startswith(str(ROOT))
        assert p not in ("/", os.path.expanduser("~"), "/tmp", "/dev/shm", "/work")
        assert "site-packages" not in p and ".cache" not in p


@strong
def test_kernel_hides_the_project_and_its_tasks() -> None:
    code = _ATTEMPTS + (
        "def f(root):\n"
        "    return {\n"
        "        'read': attempt(lambda: open(root + '/tasks/code.jsonl').read(50)),\n"
        "        'list': attempt(lambda: os.listdir(root)),\n"
        "        'sqlite': attempt(lambda: sqlite3.connect(root + '/tasks/code.jsonl',\n"
        "                          uri=False).execute('select 1').fetchall()),\n"
        "        'ppid_cwd': attempt(lambda: os.listdir('/proc/%d/cwd' % os.getppid())),\n"
        "        'init_cwd': attempt(lambda: os.readlink('/proc/1/cwd')),\n"
        "        'root': sorted(os.listdir('/')),\n"
        "        'cwd': os.getcwd(),\n"
        "    }\n"
    )
    out = _value(_bare(code, str(ROOT)))
    assert isinstance(out, dict)
    assert out["read"] == "FileNotFoundError" and out["list"] == "FileNotFoundError"
    assert not out["sqlite"].startswith("ok")
    assert not str(out["ppid_cwd"]).startswith("ok") or "tasks" not in out["ppid_cwd"]
    assert str(ROOT) not in str(out)
    top = str(ROOT).strip("/").split("/")[0]
    assert top not in out["root"] and set(out["root"]) <= {
        "dev", "lib", "lib32", "lib64", "libx32", "proc", "root", "sandbox", "usr", "opt",
    }  # fmt: skip
    assert out["cwd"] == "/sandbox"
    # With the hook on, the same program meets the hook first: still nothing read.
    hooked = run_calls(code, "f", [[str(ROOT)]], FAST)
    assert "code-gen" not in str(hooked.outcomes[0]) and str(ROOT) + "/tasks" not in str(
        hooked.outcomes[0].value if hooked.outcomes[0] else ""
    )


@strong
def test_kernel_hides_the_parents_processes() -> None:
    code = _ATTEMPTS + (
        "def f(host_pid):\n"
        "    pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "    return [pids, os.getpid(), os.getppid(),\n"
        "            attempt(lambda: open('/proc/%d/cmdline' % host_pid).read()),\n"
        "            attempt(lambda: os.readlink('/proc/%d/exe' % host_pid))]\n"
    )
    pids, me, parent, cmdline, exe = _value(_bare(code, os.getpid()))  # type: ignore[misc]
    assert os.getpid() not in pids and len(pids) <= 3 and me <= 3 and parent == 1
    assert cmdline == "FileNotFoundError" and exe == "FileNotFoundError"


@strong
def test_kernel_stops_writes_fifos_sockets_and_sqlite_outside_the_tmpfs(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    store.mkdir()
    code = _ATTEMPTS + (
        "def f(store):\n"
        "    def unix():\n"
        "        s = socket.socket(socket.AF_UNIX)\n"
        "        s.bind(store + '/sock')\n"
        "    def db():\n"
        "        c = sqlite3.connect(store + '/forged.sqlite')\n"
        "        c.execute('create table t (x)')\n"
        "        c.commit()\n"
        "    out = {\n"
        "        'write': attempt(lambda: open(store + '/record.json', 'w').write('{}')),\n"
        "        'osopen': attempt(lambda: os.open(store + '/x', os.O_CREAT | os.O_WRONLY)),\n"
        "        'fifo': attempt(lambda: os.mkfifo(store + '/store.fifo')),\n"
        "        'unix': attempt(unix),\n"
        "        'sqlite': attempt(db),\n"
        "        'mkdir': attempt(lambda: os.makedirs(store + '/sub')),\n"
        "    }\n"
        "    for d in ('/', '/usr/lib/', '/dev/shm/', '/dev/', '/proc/', '/root/'):\n"
        "        p = d + 'icpo-sbx-escape'\n"
        "        out[p] = attempt(lambda: open(p, 'w').write('x'))  # noqa: B023\n"
        "    out['fifo_dev'] = attempt(lambda: os.mkfifo('/dev/icpo-sbx-escape.fifo'))\n"
        "    out['inside'] = attempt(lambda: (os.mkfifo('ok.fifo'), open('ok', 'w').write('1')))\n"
        "    return out\n"
    )
    out = _value(_bare(code, str(store)))
    assert isinstance(out, dict)
    inside = out.pop("inside")
    assert inside.startswith("ok")  # its own tmpfs is writable
    assert all(not v.startswith("ok") for v in out.values()), out
    assert list(store.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["runs"]
    for d in ("/", "/usr/lib/", "/dev/shm/", "/dev/", "/root/"):
        assert not os.path.lexists(d + "icpo-sbx-escape")
    # The hook on, as the entry points run it: sqlite3.connect raises no audit event for the
    # file it opens, so only the kernel stands between it and the run store.
    hooked = run_calls(code, "f", [[str(store)]], FAST)
    assert hooked.outcomes[0] is not None
    assert list(store.iterdir()) == []


@strong
def test_kernel_stops_signals_to_the_parent() -> None:
    import signal

    hits: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda *a: hits.append(1))
    try:
        code = _ATTEMPTS + (
            "def f(host_pid):\n"
            "    def pidfd():\n"
            "        fd = os.pidfd_open(host_pid)\n"
            "        signal.pidfd_send_signal(fd, signal.SIGUSR1)\n"
            "    return [attempt(lambda: os.kill(host_pid, signal.SIGUSR1)),\n"
            "            attempt(lambda: os.killpg(host_pid, signal.SIGUSR1)),\n"
            "            attempt(pidfd),\n"
            "            attempt(lambda: os.kill(os.getppid(), signal.SIGUSR1)),\n"
            "            attempt(lambda: os.kill(os.getppid(), signal.SIGKILL))]\n"
        )
        out = _value(_bare(code, os.getpid()))
        hooked = run_calls(code, "f", [[os.getpid()]], FAST)
        time.sleep(0.2)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert isinstance(out, list) and out[:3] == ["ProcessLookupError"] * 3, out
    assert hits == [] and hooked.outcomes[0] is not None
    _still_works()


@strong
def test_daemon_left_behind_dies_with_the_sandbox(tmp_path: Path) -> None:
    token = f"icpo-daemon-{os.getpid()}-{time.monotonic_ns()}"
    code = (
        "import os, sys, time\n"
        "def f(target, token):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            os.closerange(0, 1024)  # a proper daemon: the run ends without waiting\n"
        "            prog = 'import time\\n'\n"
        "            prog += 'for _ in range(100):\\n'\n"
        "            prog += '    time.sleep(0.05)\\n'\n"
        '            prog += \'    try: open(%r, "w").write("forged")\\n\' % target\n'
        "            prog += '    except OSError: pass\\n'\n"
        "            prog += '# ' + token\n"
        "            os.execv(sys.executable, [sys.executable, '-c', prog])\n"
        "        os._exit(0)\n"
        "    os.wait()\n"
        "    time.sleep(0.3)\n"
        "    alive = 0\n"
        "    for p in os.listdir('/proc'):\n"
        "        try:\n"
        "            alive += token.encode() in open('/proc/%s/cmdline' % p, 'rb').read()\n"
        "        except OSError:\n"
        "            pass\n"
        "    return ['verdict', alive]\n"
    )
    target = tmp_path / "record.json"
    res = _bare(code, str(target), token)
    assert _value(res) == ["verdict", 1] and res.status == "ok"  # the daemon was running
    time.sleep(1.0)
    alive = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                alive.append(pid)
        except OSError:
            pass
    assert alive == [] and not target.exists()


@strong
def test_wall_clock_kills_every_process_of_the_sandbox() -> None:
    token = f"icpo-spin-{os.getpid()}-{time.monotonic_ns()}"
    code = (
        "import os, sys, signal\n"
        "def f(token):\n"
        "    for _ in range(3):\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"
        "            os.execv(sys.executable, [sys.executable, '-c',\n"
        "                     'import signal\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\n'\n"
        "                     'while True: pass\\n# ' + token])\n"
        "    while True:\n"
        "        pass\n"
    )
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # the host sees the sandbox's processes while they run
        while not stop.is_set():
            seen.append(sum(_cmdline_has(p, token) for p in os.listdir("/proc") if p.isdigit()))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    t = time.monotonic()
    try:
        res = _bare(code, token, limits=Limits(wall_s=1.5, per_test_s=10, cpu_s=10))
    finally:
        stop.set()
        watcher.join()
    assert res.status == "timeout" and time.monotonic() - t < 6
    assert max(seen) == 3  # three setsid'd spinners ran
    time.sleep(0.5)
    left = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, token)]
    assert left == []


def _cmdline_has(pid: str, token: str) -> bool:
    try:
        return token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@strong
def test_kernel_keeps_environment_secrets_and_the_host_network_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "sk-test-" + "y" * 24
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    name = f"\0icpo-sbx-{os.getpid()}-{time.monotonic_ns()}"
    server = socket.socket(socket.AF_UNIX)
    server.bind(name)  # an abstract socket: per network namespace, no file to hide
    server.listen(1)
    server.settimeout(0.3)
    code = _ATTEMPTS + (
        "def f(name):\n"
        "    env = [dict(os.environ)]\n"
        "    for p in os.listdir('/proc'):\n"
        "        if p.isdigit() or p == 'self':\n"
        "            env.append(attempt(lambda: open('/proc/%s/environ' % p, 'rb').read()))\n"
        "    def conn():\n"
        "        s = socket.socket(socket.AF_UNIX)\n"
        "        s.connect(name)\n"
        "        s.sendall(b'leak')\n"
        "    return [repr(env), attempt(conn)]\n"
    )
    try:
        env, conn = _value(_bare(code, name))  # type: ignore[misc]
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert secret not in env and "OPENAI_API_KEY" not in env
    assert conn in ("ConnectionRefusedError", "FileNotFoundError"), conn


@strong
def test_humaneval_record_and_replay_children_are_both_confined(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[dict[str, bool]] = []
    real = sandbox.run_job

    def spy(*args: object, **kwargs: object) -> sandbox.SandboxResult:
        res = real(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(res.isolation)
        return res

    monkeypatch.setattr(sandbox, "run_job", spy)
    test = "def check(candidate):\n    assert candidate(2) == 4\n"
    ok, _ = run_check("def double(x):\n    return 2 * x\n", test, "double", FAST)
    assert ok and len(seen) == 2 and all(s["bwrap"] and s["fs"] for s in seen)
    target = tmp_path / "forged"
    hostile = (
        "import sqlite3\n"
        f"try:\n    sqlite3.connect({str(target)!r}).execute('create table t (x)')\n"
        "except Exception:\n    pass\n"
        f"try:\n    open({str(ROOT / 'tasks' / 'code.jsonl')!r}).read()\n"
        "except Exception:\n    pass\n"
        "def double(x):\n    return 5\n"
    )
    assert run_check(hostile, test, "double", FAST)[0] is False
    assert not target.exists() and len(seen) == 4 and all(s["bwrap"] for s in seen)


@strong
def test_hostile_reply_through_the_grading_path_scores_zero(tmp_path: Path) -> None:
    from icpo_eval.families import get_family
    from icpo_eval.judges import RuleJudge
    from icpo_eval.reward import judge_reply
    from icpo_eval.tasksets import read_jsonl

    inst = read_jsonl(ROOT / "tasks" / "code.jsonl")[0]
    fam = get_family("code")
    history = [{"role": "system", "content": fam.system_prompt(inst)}]
    history += [{"role": "user", "content": s.shard} for s in inst.shards]
    reference = str(inst.fields["reference"])
    honest = judge_reply(inst, fam, RuleJudge(), f"```python\n{reference}```", history, True)
    assert honest.reward == 1.0, honest
    target = tmp_path / "forged.sqlite"
    name = str(inst.fields["func_name"])
    hostile = (
        "```python\n"
        "import json, os, sqlite3\n"
        "EXPECTED = {{}}\n"
        "for path in ('/work/main/tasks/code.jsonl', {!r}):\n"
        "    try:\n"
        "        for line in open(path):\n"
        "            row = json.loads(line)\n"
        "            for t in row['tests'] if row.get('task_id') == {!r} else []:\n"
        "                EXPECTED[json.dumps(t['input'])] = t['output']\n"
        "    except Exception:\n"
        "        pass\n"
        "try:\n"
        "    sqlite3.connect({!r}).execute('create table t (x)')\n"
        "except Exception:\n"
        "    pass\n"
        "def {}(*args):\n"
        "    return EXPECTED.get(json.dumps(list(args)), 'no idea')\n"
        "```"
    ).format(str(ROOT / "tasks" / "code.jsonl"), inst.task_id, str(target), name)
    ns: dict[str, object] = {}
    exec(hostile.strip("`").removeprefix("python\n"), ns)  # outside the sandbox it would pass
    assert all(ns[name](*t["input"]) == t["output"] for t in inst.fields["tests"])  # type: ignore[operator]
    target.unlink()
    v = judge_reply(inst, fam, RuleJudge(), hostile, history, True)
    assert v.reward == 0.0 and v.score == 0.0, v
    assert not target.exists()


@strong
def test_recording_child_cannot_read_the_tests_expected_values() -> None:
    # In the recording child the program runs next to check(); the job that carried check's
    # source reached the child through a file and a descriptor, both gone before it loads.
    test = "def check(candidate):\n    assert candidate(1) == 987654321\n"
    code = (
        "import os, stat\n"
        "def scan():\n"
        "    found = []\n"
        "    for d in ('.', '/sandbox', '/proc/self/fd'):\n"
        "        for name in os.listdir(d):\n"
        "            try:\n"
        "                if stat.S_ISREG(os.stat(os.path.join(d, name)).st_mode):\n"
        "                    with open(os.path.join(d, name), 'rb') as fh:\n"
        "                        found.append(fh.read(1 << 20))\n"
        "            except OSError:\n"
        "                pass\n"
        "    for fd in range(3, 256):\n"
        "        try:\n"
        "            if not stat.S_ISREG(os.fstat(fd).st_mode):\n"
        "                continue\n"
        "            os.lseek(fd, 0, 0)\n"
        "            found.append(os.read(fd, 1 << 20))\n"
        "        except OSError:\n"
        "            pass\n"
        "    return found\n"
        "FOUND = scan()\n"
        "def g(x):\n"
        "    return 987654321 if any(b'987654321' in b for b in FOUND) else len(FOUND)\n"
    )
    job = {"mode": "record", "code": code, "func_name": "g", "test": test}
    if sandbox.strength() != "strong":
        pytest.skip("no bubblewrap")
    res = sandbox.run_job(job, 1, FAST, audit=False)
    assert res.outcomes[0] is not None and res.outcomes[0].ok
    assert res.outcomes[0].value != 987654321
    assert run_check(code, test, "g", FAST)[0] is False
