"""A model's SQL runs in a worker process with its own limits: bombs (huge blobs, zeroblob rows,
runaway CTEs, cross joins, one opcode past the clock) end as a QueryError within seconds while
the parent's memory stays put, and honest queries return exactly what SQLite returns."""

from __future__ import annotations

import resource
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from icpo_eval.families import database_exec
from icpo_eval.families.database import bundled_db_path
from icpo_eval.families.database_exec import QueryError, execute_readonly
from icpo_eval.tasksets import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICPO_EVAL_CACHE", str(tmp_path_factory.getbasetemp() / "db-cache"))


@pytest.fixture
def shop() -> Path:
    return bundled_db_path("shop")


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


BOMBS = {
    "randomblob(2e8) x 60": "SELECT " + " + ".join(["length(randomblob(200000000))"] * 60),
    "zeroblob(1e9)": "SELECT length(zeroblob(1000000000))",
    "zeroblob rows": "SELECT zeroblob(1000000) FROM order_items a, order_items b",
    "randomblob rows": "SELECT randomblob(1500000) FROM order_items a, order_items b",
    "printf wide": "SELECT printf('%.*c', 1500000000, 'x')",
    "recursive CTE": (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT COUNT(*) FROM n"
    ),
    "cross join": "SELECT COUNT(*) FROM order_items a, order_items b, order_items c, customers d",
    "group_concat": (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 3000000) "
        "SELECT group_concat(hex(randomblob(64))) FROM n"
    ),
    "many rows": "SELECT * FROM order_items a, order_items b",
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_sql_bombs_are_query_errors_in_seconds(shop: Path, name: str) -> None:
    before = _max_rss()
    start = time.monotonic()
    with pytest.raises(QueryError):
        execute_readonly(shop, BOMBS[name], time_limit_s=1.0)
    assert time.monotonic() - start < 5.0
    assert _max_rss() - before < 100 * MB  # the rows never reach this process
    assert execute_readonly(shop, "SELECT COUNT(*) FROM customers") == [(80,)]


def test_a_bomb_grades_zero(shop: Path) -> None:
    from icpo_eval.families import get_family
    from icpo_eval.records import Instruction, Shard

    fields = {"db_id": "shop", "db_origin": "bundled", "reference_sql": "SELECT 1"}
    inst = Instruction("b", "database", [Shard(1, "x")], fields=fields)
    score, detail = get_family("database").grade(inst, BOMBS["randomblob(2e8) x 60"])
    assert score == 0.0 and detail is not None and "too big" in detail["error"]


def test_one_step_past_the_clock_is_killed(shop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its progress handler (steps so rare it never runs) a runaway query is only
    stopped by the parent's wall clock, which kills the worker; the next query gets a new one."""
    database_exec._close_workers()
    monkeypatch.setattr(database_exec, "_PROGRESS_STEPS", 2**31 - 1)
    start = time.monotonic()
    with pytest.raises(QueryError, match="stopped after 0.5 s"):
        execute_readonly(shop, BOMBS["recursive CTE"], time_limit_s=0.5)
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 0.5 + database_exec._WALL_GRACE_S + 2.0
    assert not database_exec._pool  # the killed worker was not given back
    monkeypatch.undo()
    database_exec._close_workers()
    assert execute_readonly(shop, "SELECT COUNT(*) FROM customers") == [(80,)]


def test_workers_are_reused_and_threads_get_their_own(shop: Path) -> None:
    execute_readonly(shop, "SELECT 1")
    pids = {w.proc.pid for w in database_exec._pool}
    execute_readonly(shop, "SELECT 1")
    assert {w.proc.pid for w in database_exec._pool} == pids  # the same worker answered
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(20):
                assert execute_readonly(shop, "SELECT COUNT(*) FROM products")[0][0] > 0
        except BaseException as e:  # pragma: no cover (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(database_exec._pool) <= database_exec._MAX_IDLE


def test_values_come_back_typed_and_exact(shop: Path) -> None:
    sql = (
        "SELECT x'00ff10', 1.5, NULL, 'é\n\x01\"\\', 9223372036854775807, "
        "-9223372036854775808, 1e999, -0.0, ''"
    )
    (row,) = execute_readonly(shop, sql)
    assert row == (b"\x00\xff\x10", 1.5, None, 'é\n\x01"\\', 2**63 - 1, -(2**63), float("inf"),
                   0.0, "")  # fmt: skip
    assert [type(v) for v in row[:5]] == [bytes, float, type(None), str, int]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM nope", "no such table"),
        ("SELECT 1; SELECT 2", "one statement"),
        ("DROP TABLE customers", "not authorized"),
        ("   ;  ", "empty query"),
    ],
)
def test_errors_are_the_same_as_before(shop: Path, sql: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        execute_readonly(shop, sql)


def test_committed_references_return_what_sqlite_returns(shop: Path) -> None:
    """Grading is unchanged: every committed reference query returns, through the worker,
    exactly the rows an in-process read-only connection returns (and the family scores them 1:
    tests/test_database_family.py::test_every_reference_scores_one)."""
    conn = sqlite3.connect(f"{shop.resolve().as_uri()}?mode=ro", uri=True)
    try:
        committed = read_jsonl(ROOT / "tasks" / "database.jsonl")
        for inst in committed:
            sql = inst.fields["reference_sql"]
            assert execute_readonly(shop, sql) == conn.execute(sql).fetchall(), inst.task_id
    finally:
        conn.close()
