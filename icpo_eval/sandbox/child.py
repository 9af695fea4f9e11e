"""The child program of the sandbox: the stub that loads a model-written program and reports.

The parent (:mod:`icpo_eval.sandbox.launch`) never imports this file to run it: it reads it as
text and hands the text to a fresh interpreter (``python -I -S -B -X utf8 -c <this text> <result
fd> <temporary directory> <readable roots as JSON>``), where ``__name__`` is ``"__main__"``.
Importing it (a linter, coverage, a test) defines ``_main`` and does nothing else.

In the child it reads ``job.json`` from the temporary directory (and removes it), writes the
job's input files there, closes every descriptor but stdio and the result channel, installs the
audit hook, loads the program and writes one Python literal per line to the result descriptor:
``('ready',)``, ``('loaded', 'ok' | 'error', ...)``, ``('result', i, 'ok' | 'error', value)``,
``('checked', note)``, ``('violation', event)``. The parent judges; the child only reports.

Everything the stub needs after the program loads is captured in local variables first; the
program cannot reach them without frames, which the hook blocks. The ``%`` formats are kept as
they were reviewed (an f-string would call ``__format__`` where ``%s`` calls ``__str__``).
Keep this file ASCII: it travels on a command line.
"""

# ruff: noqa: UP031


def _main():
    import builtins
    import io
    import json
    import os
    import signal
    import sys

    rfd = int(sys.argv[1])
    root = sys.argv[2]
    read_roots = tuple(json.loads(sys.argv[3]))
    with open(root + "/job.json", encoding="utf-8") as f:
        job = json.load(f)
    os.remove(root + "/job.json")
    for name, text in job.pop("files", {}).items():  # stdin mode's inputs (names from the parent)
        with open(root + "/" + name, "w", encoding="utf-8") as f:
            f.write(text)
    import resource

    fsize = int(job.get("file_mb", 16)) * 1024 * 1024  # the program's files, not the parent's
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    os.closerange(3, rfd)  # nothing but stdio and the result channel stays open
    os.closerange(rfd + 1, 65536)
    _write, _type, _repr, _len, _str, _int, _bytes = os.write, type, repr, len, str, int, bytes
    _float, _bool, _list, _tuple = float, bool, list, tuple
    _dict, _set, _frozenset = dict, set, frozenset
    _complex, _none = complex, type(None)
    _frepr, _join, _starts, _split = float.__repr__, str.join, str.startswith, str.split
    _bdecode, _encode, _exec, _compile = bytes.decode, str.encode, exec, compile
    _BaseException, _SystemExit, _PermissionError, _ValueError = (
        BaseException,
        SystemExit,
        PermissionError,
        ValueError,
    )
    _setitimer, _ITIMER_REAL = signal.setitimer, signal.ITIMER_REAL
    _open, _dup2, _close = os.open, os.dup2, os.close
    _O_RDONLY, _O_WFLAGS = os.O_RDONLY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    _textopen, _sorted, _enumerate, _getattr, _callable = open, sorted, enumerate, getattr, callable

    def emit(text):
        data = _encode(text + "\n", "utf-8", "surrogatepass")
        try:
            while data:
                data = data[_write(rfd, data) :]
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

    blocked = frozenset(
        (
            "os.fork",
            "os.forkpty",
            "os.posix_spawn",
            "os.spawn",
            "os.exec",
            "os.system",
            "subprocess.Popen",
            "pty.spawn",
            "os.kill",
            "os.killpg",
            "signal.pthread_kill",
            "os.chdir",
            "os.chroot",
            "os.symlink",
            "os.link",
            "sys.settrace",
            "sys.setprofile",
            "sys._current_frames",
            "gc.get_objects",
            "gc.get_referrers",
            "gc.get_referents",
            "resource.setrlimit",
            "resource.prlimit",
            "code.__new__",
            "function.__new__",
            "os.setuid",
            "os.setgid",
            "webbrowser.open",
            "os.startfile",
        )
    )
    blocked_prefix = ("ctypes.", "socket.", "_winapi.", "winreg.", "msvcrt.", "syslog.")
    blocked_imports = frozenset(
        (
            "ctypes",
            "_ctypes",
            "_xxsubinterpreters",
            "_testcapi",
            "_testinternalcapi",
            "_testmultiphase",
            "_tkinter",
        )
    )
    frame_attrs = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"))
    code_attrs = frozenset(("__code__",))
    write_events = frozenset(
        (
            "os.remove",
            "os.rmdir",
            "os.mkdir",
            "os.rename",
            "os.truncate",
            "os.chmod",
            "os.chown",
            "os.utime",
            "os.chflags",
            "os.lchflags",
            "os.setxattr",
            "os.removexattr",
            "shutil.rmtree",
            "shutil.copyfile",
            "shutil.copymode",
            "shutil.copystat",
            "shutil.copytree",
            "shutil.move",
            "shutil.make_archive",
            "shutil.chown",
        )
    )
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
                "w" in mode or "a" in mode or "x" in mode or "+" in mode
            )
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
                timed(lambda: _exec(code, g))  # noqa: B023 (called at once)
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
            result(i, lambda: fn(*args))  # noqa: B023 (called at once)
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


if __name__ == "__main__":
    _main()
