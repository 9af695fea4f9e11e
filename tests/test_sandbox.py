"""The sandbox contains hostile programs, and the harness stays alive and correct afterwards.

Each test names what stopped the program (the audit hook's violation log, a resource limit, the
wall clock, the output cap, or the parent-side comparison) so that the evidence is in the
assertions, not only in the docstring of :mod:`icpo_eval.sandbox`.
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
