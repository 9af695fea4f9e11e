"""Running a model's SQL query read-only, and comparing result sets (the ``database`` family).

* the query runs in a worker process (:func:`execute_readonly`), never in ours: one SQLite opcode
  can run for seconds (``randomblob``) or fill memory (``zeroblob`` rows) between two calls of a
  progress handler, so the worker has its own address-space and CPU limits, SQLite's length
  limit (:data:`MAX_VALUE_BYTES`), and a wall clock that kills it; a worker is reused across
  queries (threads each get their own) and replaced after a kill;
* the file is opened with ``mode=ro`` and an authorizer that allows reads only, so ``DROP``,
  ``ATTACH``, ``PRAGMA`` writes and the like fail and the file stays untouched;
* a progress handler aborts any statement after :data:`QUERY_TIME_LIMIT_S` (runaway recursive
  CTEs, cross joins), at most :data:`MAX_ROWS` rows and :data:`MAX_RESULT_BYTES` bytes come back,
  and the parent type-checks every value (ints, floats, text, bytes, NULL);
* rows are compared as multisets of tuples (floats rounded to 2 decimals, 5 == 5.0), in order only
  when the reference has a top-level ORDER BY (:func:`is_ordered`), and the predicted columns may
  come in another order (Spider's execution accuracy allows it too). Column names never matter.
"""

from __future__ import annotations

import atexit
import inspect
import itertools
import json
import os
import re
import selectors
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_RESULT_BYTES",
    "MAX_ROWS",
    "MAX_VALUE_BYTES",
    "QUERY_TIME_LIMIT_S",
    "QueryError",
    "compare_results",
    "execute_readonly",
    "is_ordered",
]

#: Wall-clock budget of one query, checked by the progress handler.
QUERY_TIME_LIMIT_S = 2.0
#: Most rows fetched from a query; a bigger result is refused (no reference is that big).
MAX_ROWS = 10_000
#: Virtual-machine steps between two checks of the clock.
_PROGRESS_STEPS = 1_000
#: SQLite's SQLITE_LIMIT_LENGTH in the worker: the longest string, blob or row a query may make.
MAX_VALUE_BYTES = 2_000_000
#: Most bytes of a query's reply (its rows as JSON, blobs in hex); a bigger result is refused.
MAX_RESULT_BYTES = 16_000_000
#: The worker's address space, and the CPU seconds it may spend on a query past the time limit.
_WORKER_MEMORY_MB = 1024
_CPU_GRACE_S = 2
#: How long past the time limit the parent waits before it kills the worker, and how long a new
#: worker may take to start.
_WALL_GRACE_S = 1.0
_START_S = 15.0
#: Idle workers kept for reuse.
_MAX_IDLE = 8


#: Authorizer actions a read-only query needs; everything else (writes, ATTACH, PRAGMA,
#: transactions, schema changes) is denied (by the worker's authorizer).
_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
    | ({sqlite3.SQLITE_RECURSIVE} if hasattr(sqlite3, "SQLITE_RECURSIVE") else set())
)


class QueryError(Exception):
    """The query could not run (syntax, refused, too slow, too big); the message says why."""


def execute_readonly(
    db_path: Path, sql: str, time_limit_s: float = QUERY_TIME_LIMIT_S, max_rows: int = MAX_ROWS
) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` run against ``db_path`` opened read-only; :class:`QueryError` otherwise.

    Three independent guards: the ``mode=ro`` URI (SQLite itself refuses to write the file), an
    authorizer that admits only reads (so ``ATTACH`` cannot create a file elsewhere and
    ``PRAGMA`` cannot change settings), and a single-statement rule (sqlite3's ``execute``).
    The query runs in a worker process (see the module docstring): its progress handler bounds
    the time of the statement and of fetching its rows, and a wall clock
    (``time_limit_s`` + :data:`_WALL_GRACE_S`) kills the worker when one step runs past it.
    """
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise QueryError("empty query")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
        raise QueryError("query too long")
    request = {
        "uri": f"{db_path.resolve().as_uri()}?mode=ro",
        "sql": text,
        "time_limit_s": float(time_limit_s),
        "max_rows": int(max_rows),
    }
    stopped = f"query stopped after {time_limit_s:g} s"
    worker = _take_worker()
    try:
        data = worker.ask(
            json.dumps(request).encode("utf-8", "surrogatepass"), time_limit_s + _WALL_GRACE_S
        )
    except _WorkerFailed as e:
        worker.kill()
        raise QueryError(stopped if e.timed_out else str(e)) from None
    except BaseException:
        worker.kill()
        raise
    _give_back(worker)
    return _rows_of(data, max_rows, stopped)


def _rows_of(data: bytes, max_rows: int, stopped: str) -> list[tuple[Any, ...]]:
    """The rows of a worker's reply, every value type-checked; :class:`QueryError` otherwise."""
    try:
        reply = json.loads(data)
    except (ValueError, RecursionError):
        raise QueryError("the query's worker sent a bad reply") from None
    if type(reply) is not dict:
        raise QueryError("the query's worker sent a bad reply")
    if reply.get("stopped") is True:
        raise QueryError(stopped)
    if "error" in reply:
        err = reply["error"]
        raise QueryError(err[:2000] if type(err) is str else "query failed")
    rows = reply.get("rows")
    if type(rows) is not list or len(rows) > max_rows:
        raise QueryError("the query's worker sent a bad reply")
    out = []
    for row in rows:
        if type(row) is not list:
            raise QueryError("the query's worker sent a bad reply")
        values = []
        for v in row:
            t = type(v)
            if t is list and len(v) == 2 and v[0] == "b" and type(v[1]) is str:
                try:
                    v = bytes.fromhex(v[1])
                except ValueError:
                    raise QueryError("the query's worker sent a bad reply") from None
            elif t not in (int, float, str) and v is not None:
                raise QueryError("the query's worker sent a bad reply")
            values.append(v)
        out.append(tuple(values))
    return out


# --------------------------------------------------------------------------------------------
# The worker process
# --------------------------------------------------------------------------------------------


def _worker_main() -> None:  # pragma: no cover (runs in the worker, from its source text)
    """The worker: read one JSON request per line on stdin, answer one JSON line on stdout.

    It runs as ``python -I -S -c <this function's source> <config as JSON>`` with an empty
    environment; it sets its own limits before it reads a request, and each reply is
    ``{"rows": [[value, ...], ...]}`` (a blob as ``["b", hex]``), ``{"error": message}`` or
    ``{"stopped": true}`` (the progress handler ran out of time).
    """
    import json
    import resource
    import signal
    import sqlite3
    import sys
    import time

    cfg = json.loads(sys.argv[1])
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * mb,) * 2)  # SQLite's temporary files
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails, no kill
    allowed = frozenset(cfg["allowed"])
    max_length, max_reply, steps = cfg["max_length"], cfg["max_reply"], cfg["steps"]
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]

    def authorize(action, *_):
        return sqlite3.SQLITE_OK if action in allowed else sqlite3.SQLITE_DENY

    def run(req):
        max_rows = req["max_rows"]
        conn = sqlite3.connect(req["uri"], uri=True, timeout=1.0)
        try:
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_length)
            deadline = time.monotonic() + req["time_limit_s"]
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), steps)
            conn.set_authorizer(authorize)
            rows, size = [], 0
            try:
                for row in conn.execute(req["sql"]):
                    if len(rows) >= max_rows:
                        return {"error": f"more than {max_rows} rows"}
                    values = []
                    for v in row:
                        if type(v) is bytes:
                            v = ["b", v.hex()]
                            size += len(v[1])
                        elif type(v) is str:
                            size += len(v)
                        size += 8
                        values.append(v)
                    rows.append(values)
                    if size > max_reply:
                        return {"error": f"result bigger than {max_reply} bytes"}
            except sqlite3.OperationalError as e:
                if "interrupted" in str(e):
                    return {"stopped": True}
                return {"error": str(e)}
            except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as e:
                return {"error": str(e)}
            return {"rows": rows}
        finally:
            conn.close()

    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        req = json.loads(line)
        use = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(use.ru_utime + use.ru_stime + req["time_limit_s"]) + cfg["cpu_grace_s"]
        if cpu_hard != resource.RLIM_INFINITY:
            soft = min(soft, cpu_hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
        try:
            data = json.dumps(run(req), ensure_ascii=False).encode("utf-8", "surrogatepass")
            if len(data) > max_reply:
                data = b'{"error": "result bigger than %d bytes"}' % max_reply
        except MemoryError:
            data = b'{"error": "out of memory"}'
        except Exception as e:
            data = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
        out.write(data + b"\n")
        out.flush()


class _WorkerFailed(Exception):
    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def _worker_command() -> list[str]:
    source = textwrap.dedent(inspect.getsource(_worker_main)) + "\n_worker_main()\n"
    cfg = {
        "memory_mb": _WORKER_MEMORY_MB,
        "allowed": sorted(_ALLOWED_ACTIONS),
        "max_length": MAX_VALUE_BYTES,
        "max_reply": MAX_RESULT_BYTES,
        "steps": _PROGRESS_STEPS,
        "cpu_grace_s": _CPU_GRACE_S,
    }
    return [sys.executable, "-I", "-S", "-c", source, json.dumps(cfg)]


class _Worker:
    """One worker process, used by one thread at a time."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.proc = subprocess.Popen(
            _worker_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={},
            cwd="/",
            start_new_session=True,
        )
        self.ready = False

    def _line(self, deadline: float, cap: int, what: str) -> bytes:
        """One line from the worker, before ``deadline`` and at most ``cap`` bytes."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        chunks: list[bytes] = []
        size = 0
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _WorkerFailed(f"{what}: no answer in time", timed_out=True)
                if not sel.select(left):
                    continue
                data = os.read(fd, 1 << 20)
                if not data:
                    raise _WorkerFailed(self._death(what))
                chunks.append(data)
                size += len(data)
                if size > cap:
                    raise _WorkerFailed(f"{what}: result bigger than {MAX_RESULT_BYTES} bytes")
                if data.endswith(b"\n"):
                    return b"".join(chunks)

    def _death(self, what: str) -> str:
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        if rc is not None and rc < 0:
            if -rc == signal.SIGXCPU:
                return f"{what}: out of CPU time"
            if -rc == signal.SIGKILL:
                return f"{what}: killed (out of memory?)"
            return f"{what}: the worker died of signal {-rc}"
        return f"{what}: the worker died (exit {rc})"

    def ask(self, request: bytes, time_s: float) -> bytes:
        """Send one request; its reply line. :class:`_WorkerFailed` when the worker dies, runs
        past ``time_s`` or answers too much."""
        if not self.ready:
            self._line(time.monotonic() + _START_S, 64, "query worker start")
            self.ready = True
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(request + b"\n")
            self.proc.stdin.flush()
        except OSError:
            raise _WorkerFailed(self._death("query")) from None
        return self._line(time.monotonic() + time_s, MAX_RESULT_BYTES + 1024, "query")

    def kill(self) -> None:
        if self.owner != os.getpid():
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


_pool: list[_Worker] = []
_pool_lock = threading.Lock()


def _take_worker() -> _Worker:
    with _pool_lock:
        while _pool:
            w = _pool.pop()
            if w.owner == os.getpid() and w.proc.poll() is None:
                return w
    return _Worker()


def _give_back(worker: _Worker) -> None:
    with _pool_lock:
        if len(_pool) < _MAX_IDLE and worker.owner == os.getpid():
            _pool.append(worker)
            return
    worker.kill()


def _reset_after_fork() -> None:
    """A forked child must not share its parent's workers (nor a lock held at the fork)."""
    global _pool_lock
    _pool.clear()
    _pool_lock = threading.Lock()


def _close_workers() -> None:
    with _pool_lock:
        workers = list(_pool)
        _pool.clear()
    for w in workers:
        w.kill()


os.register_at_fork(after_in_child=_reset_after_fork)
atexit.register(_close_workers)


def _norm_value(v: Any) -> Any:
    """Values as compared: floats rounded to 2 decimals and integral ones made ints (5.0 == 5),
    bytes kept, text kept exactly."""
    if isinstance(v, float):
        r = round(v, 2)
        return int(r) if r.is_integer() else r
    return v


def _norm_rows(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    return [tuple(_norm_value(v) for v in row) for row in rows]


def compare_results(
    reference: Sequence[Sequence[Any]], predicted: Sequence[Sequence[Any]], ordered: bool
) -> bool:
    """Do two results hold the same rows (in the same order when ``ordered``)?

    The predicted columns may be a permutation of the reference's: a model that selects
    ``last_name, first_name`` answered the question. Candidate permutations are pruned by
    comparing each column's multiset of values first, so this stays cheap.
    """
    ref, pred = _norm_rows(reference), _norm_rows(predicted)
    if len(ref) != len(pred):
        return False
    if not ref:
        return True
    width = len(ref[0])
    if any(len(r) != width for r in pred):
        return False
    ref_cols = [Counter(r[i] for r in ref) for i in range(width)]
    pred_cols = [Counter(r[i] for r in pred) for i in range(width)]
    options = [[j for j in range(width) if pred_cols[j] == ref_cols[i]] for i in range(width)]
    if any(not o for o in options):
        return False
    target = ref if ordered else Counter(ref)
    for perm in itertools.product(*options):
        if len(set(perm)) != width:
            continue
        moved = [tuple(r[j] for j in perm) for r in pred]
        if (moved if ordered else Counter(moved)) == target:
            return True
    return False


_ORDER_BY_RE = re.compile(r"\border\s+by\b", re.IGNORECASE)


def _strip_sql_noise(sql: str) -> str:
    """The query without string literals, quoted names and comments (for keyword checks)."""
    sql = re.sub(r"'(?:[^']|'')*'", "''", sql)
    sql = re.sub(r'"(?:[^"]|"")*"', '""', sql)
    sql = re.sub(r"--[^\n]*", " ", sql)
    return re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)


def is_ordered(sql: str) -> bool:
    """Does the query order its final result? True when ORDER BY appears outside parentheses
    (an ORDER BY inside a subquery or window does not order the output)."""
    text = _strip_sql_noise(sql)
    depth = 0
    flat = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0:
            flat.append(ch)
    return bool(_ORDER_BY_RE.search("".join(flat)))
