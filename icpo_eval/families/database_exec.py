"""Running a model's SQL query read-only, and comparing result sets (the ``database`` family).

* the file is opened with ``mode=ro`` and an authorizer that allows reads only, so ``DROP``,
  ``ATTACH``, ``PRAGMA`` writes and the like fail and the file stays untouched;
* a progress handler aborts any statement after :data:`QUERY_TIME_LIMIT_S` (runaway recursive
  CTEs, cross joins) and at most :data:`MAX_ROWS` rows are fetched;
* rows are compared as multisets of tuples (floats rounded to 2 decimals, 5 == 5.0), in order only
  when the reference has a top-level ORDER BY (:func:`is_ordered`), and the predicted columns may
  come in another order (Spider's execution accuracy allows it too). Column names never matter.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_ROWS",
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


#: Authorizer actions a read-only query needs; everything else (writes, ATTACH, PRAGMA,
#: transactions, schema changes) is denied.
_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
    | ({sqlite3.SQLITE_RECURSIVE} if hasattr(sqlite3, "SQLITE_RECURSIVE") else set())
)


def _authorize(action: int, *_: object) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


class QueryError(Exception):
    """The query could not run (syntax, refused, too slow, too big); the message says why."""


def execute_readonly(
    db_path: Path, sql: str, time_limit_s: float = QUERY_TIME_LIMIT_S, max_rows: int = MAX_ROWS
) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` run against ``db_path`` opened read-only; :class:`QueryError` otherwise.

    Three independent guards: the ``mode=ro`` URI (SQLite itself refuses to write the file), an
    authorizer that admits only reads (so ``ATTACH`` cannot create a file elsewhere and
    ``PRAGMA`` cannot change settings), and a single-statement rule (sqlite3's ``execute``).
    The progress handler bounds the time of the statement and of fetching its rows.
    """
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise QueryError("empty query")
    uri = f"{db_path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=1.0)
    try:
        deadline = time.monotonic() + time_limit_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_STEPS)
        conn.set_authorizer(_authorize)
        try:
            cur = conn.execute(text)
            rows = cur.fetchmany(max_rows + 1)
        except sqlite3.OperationalError as e:
            if "interrupted" in str(e):
                raise QueryError(f"query stopped after {time_limit_s:g} s") from None
            raise QueryError(str(e)) from None
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as e:
            raise QueryError(str(e)) from None
        if len(rows) > max_rows:
            raise QueryError(f"more than {max_rows} rows")
        return rows
    finally:
        conn.close()


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
