"""The database family: committed set reproducible, references pass, wrong queries fail, and
model queries cannot touch the database or run forever."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from pathlib import Path

import pytest

from icpo_eval.errors import IcpoError
from icpo_eval.families import get_family
from icpo_eval.families.database import DatabaseFamily, bundled_db_path, extract_sql
from icpo_eval.families.database_exec import compare_results, execute_readonly, is_ordered
from icpo_eval.families.database_make import TEMPLATE_NAMES, Question, make_questions
from icpo_eval.families.database_shop import make_shop_sql
from icpo_eval.records import Instruction, Shard
from icpo_eval.tasksets import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One private cache for this module, so that the built database is the one under test."""
    monkeypatch.setenv("ICPO_EVAL_CACHE", str(tmp_path_factory.getbasetemp() / "db-cache"))


@pytest.fixture(scope="module")
def family() -> DatabaseFamily:
    fam = get_family("database")
    assert isinstance(fam, DatabaseFamily)
    return fam


@pytest.fixture(scope="module")
def generated() -> list[tuple[Instruction, Question]]:
    return make_questions(200, 0)


@pytest.fixture(scope="module")
def committed() -> list[Instruction]:
    return read_jsonl(ROOT / "tasks" / "database.jsonl")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shop_script_regenerates_byte_for_byte() -> None:
    assert (ROOT / "tasks" / "database" / "shop.sql").read_text(encoding="utf-8") == (
        make_shop_sql(0)
    )


def test_the_schema_is_written_once_and_reaches_the_prompt(committed: list[Instruction]) -> None:
    folder = ROOT / "tasks" / "database"
    schema = (folder / "shop.schema.sql").read_text(encoding="utf-8")
    assert "CREATE TABLE" not in (folder / "shop.sql").read_text(encoding="utf-8")
    tables = re.findall(r"CREATE TABLE .*?\n\);", schema, flags=re.S)
    assert len(tables) == 5
    prompt = DatabaseFamily().system_prompt(committed[0])
    assert all(t in prompt for t in tables) and "edit it here" not in prompt


def test_committed_set_regenerates_byte_for_byte(
    generated: list[tuple[Instruction, Question]],
) -> None:
    text = "".join(json.dumps(i.to_dict(), ensure_ascii=False) + "\n" for i, _ in generated)
    assert (ROOT / "tasks" / "database.jsonl").read_text(encoding="utf-8") == text


def test_committed_set_shape(committed: list[Instruction]) -> None:
    assert len(committed) >= 100
    assert {i.fields["template"] for i in committed} == set(TEMPLATE_NAMES)
    kinds = " ".join(i.fields["reference_sql"] for i in committed)
    for clause in ("JOIN", "WHERE", "GROUP BY", "HAVING", "ORDER BY", "LIMIT"):
        assert clause in kinds
    for inst in committed:
        ids = [s.shard_id for s in inst.shards]
        assert ids == list(range(1, len(ids) + 1))
        required = inst.required_ids
        assert 1 in required and len(required) >= 3  # intent plus at least two conditions
        assert inst.fields["db_origin"] == "bundled" and inst.fields["db_id"] == "shop"


def test_every_reference_scores_one(family: DatabaseFamily, committed: list[Instruction]) -> None:
    for inst in committed:
        reply = f"Here you go:\n```sql\n{inst.fields['reference_sql']};\n```"
        answer = family.extract(inst, reply)
        assert answer is not None
        score, detail = family.grade(inst, answer)
        assert score == 1.0, (inst.task_id, detail)
        assert detail == {"rows": inst.fields["reference_rows"], "expected_rows": detail["rows"]}


def test_dropping_a_required_condition_scores_zero(
    family: DatabaseFamily, generated: list[tuple[Instruction, Question]]
) -> None:
    checked = 0
    for inst, q in generated:
        for k in range(len(q.conds)):
            if k + 2 in inst.required_ids:
                assert family.evaluate(inst, q.sql(drop=k)) == 0.0, (inst.task_id, k)
                checked += 1
            else:  # an optional shard really does not change the result
                assert family.evaluate(inst, q.sql(drop=k)) == 1.0, (inst.task_id, k)
    assert checked > 400


def test_column_order_and_float_noise_are_tolerated(family: DatabaseFamily) -> None:
    inst = Instruction(
        "t",
        "database",
        [Shard(1, "names")],
        fields={
            "db_id": "shop",
            "db_origin": "bundled",
            "reference_sql": "SELECT first_name, last_name FROM customers WHERE country = 'Japan'",
        },
    )
    swapped = "SELECT last_name, first_name FROM customers WHERE country = 'Japan'"
    assert family.evaluate(inst, swapped) == 1.0
    extra = "SELECT first_name, last_name, city FROM customers WHERE country = 'Japan'"
    assert family.evaluate(inst, extra) == 0.0
    assert compare_results([(1, 0.1 + 0.2)], [(1, 0.3)], ordered=True)
    assert compare_results([(5, "a")], [(5.0, "a")], ordered=False)
    assert not compare_results([(1,), (2,)], [(2,), (1,)], ordered=True)
    assert compare_results([(1,), (2,)], [(2,), (1,)], ordered=False)
    assert not compare_results([(1,), (1,)], [(1,)], ordered=False)  # multisets, not sets


def test_order_matters_only_when_the_reference_orders(family: DatabaseFamily) -> None:
    base = "SELECT name, price FROM products WHERE category = 'Books'"
    ordered = Instruction(
        "o",
        "database",
        [Shard(1, "x")],
        fields={"db_id": "shop", "db_origin": "bundled", "reference_sql": base + " ORDER BY price"},
    )
    assert family.evaluate(ordered, base + " ORDER BY price DESC") == 0.0
    assert family.evaluate(ordered, base + " ORDER BY price ASC") == 1.0
    unordered = Instruction("u", "database", [Shard(1, "x")], fields=dict(ordered.fields))
    unordered.fields["reference_sql"] = base
    assert family.evaluate(unordered, base + " ORDER BY price DESC") == 1.0
    assert is_ordered("SELECT * FROM (SELECT a FROM t ORDER BY a) LIMIT 3") is False
    assert is_ordered("SELECT a FROM t WHERE b = 'order by' ORDER BY a") is True


@pytest.mark.parametrize(
    "attack",
    [
        "DROP TABLE customers",
        "DELETE FROM orders",
        "UPDATE products SET price = 0",
        "INSERT INTO suppliers VALUES (99, 'x', 'y')",
        "CREATE TABLE evil (x)",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA user_version = 7",
        "ATTACH DATABASE '{tmp}/new.db' AS other",
        "SELECT 1; DROP TABLE customers",
        "VACUUM",
        "BEGIN IMMEDIATE",
    ],
)
def test_writes_fail_harmlessly(family: DatabaseFamily, attack: str, tmp_path: Path) -> None:
    inst = Instruction(
        "w",
        "database",
        [Shard(1, "x")],
        fields={"db_id": "shop", "db_origin": "bundled", "reference_sql": "SELECT 1"},
    )
    path = bundled_db_path("shop")
    before = _sha(path)
    score, detail = family.grade(inst, attack.format(tmp=tmp_path))
    assert score == 0.0 and detail is not None and "error" in detail
    assert _sha(path) == before
    assert not (tmp_path / "new.db").exists()
    # The database still answers.
    assert execute_readonly(path, "SELECT COUNT(*) FROM customers") == [(80,)]


def test_runaway_query_is_stopped() -> None:
    path = bundled_db_path("shop")
    runaway = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT COUNT(*) FROM n"
    )
    start = time.monotonic()
    with pytest.raises(Exception, match="stopped after 0.3 s"):
        execute_readonly(path, runaway, time_limit_s=0.3)
    assert time.monotonic() - start < 2.0
    cross = "SELECT * FROM order_items a, order_items b, order_items c"
    with pytest.raises(Exception, match="more than 100 rows"):
        execute_readonly(path, cross, max_rows=100)


def test_database_is_built_once_and_rebuilt_when_the_script_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import icpo_eval.families.database as db

    monkeypatch.setenv("ICPO_EVAL_CACHE", str(tmp_path / "cache"))
    first = bundled_db_path("shop")
    mtime = first.stat().st_mtime_ns
    assert bundled_db_path("shop") == first and first.stat().st_mtime_ns == mtime
    script = tmp_path / "shop.sql"
    script.write_text("CREATE TABLE t (x);\nINSERT INTO t VALUES (1);\n")
    monkeypatch.setattr(db, "BUNDLED_DB_DIR", tmp_path)
    other = bundled_db_path("shop")
    assert other != first and execute_readonly(other, "SELECT x FROM t") == [(1,)]
    with pytest.raises(IcpoError, match="no SQL script"):
        bundled_db_path("nope")


def test_threads_building_the_database_on_a_cold_cache_all_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """API runs grade in worker threads: eight graders meeting a cold cache at once each get a
    whole database (one temporary file per process used to be shared by its threads)."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("ICPO_EVAL_CACHE", str(tmp_path / "cache"))
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: bundled_db_path("shop"), range(8)))
    assert len(set(paths)) == 1
    assert execute_readonly(paths[0], "SELECT COUNT(*) FROM customers")[0][0] > 0
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [paths[0].name]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("```sql\nSELECT name FROM products;\n```", "SELECT name FROM products"),
        ("First:\n```sql\nSELECT 1\n```\nBetter:\n```SQL\nSELECT 2 FROM t\n```", "SELECT 2 FROM t"),
        ("```\nselect a from t\n```", "select a from t"),
        ("```python\nprint('SELECT a FROM t')\n```", None),
        ("The query is SELECT name FROM products WHERE price < 10; it lists cheap items.",
         "SELECT name FROM products WHERE price < 10"),
        ("SELECT name\nFROM products\nWHERE price < 10\nThis returns the cheap ones.",
         "SELECT name\nFROM products\nWHERE price < 10"),
        ("Should I select the customers from Germany only?", None),
        ("Which columns do you want me to SELECT?", None),
        ("", None),
        ("```sql\nDROP TABLE x;\nSELECT a FROM t;\n```", "SELECT a FROM t"),
        ("```sql\nSELECT a FROM t\n```\nAgain:\n```sql\nSELECT a FR", "SELECT a FROM t"),
        ("```sql\nSELECT a FROM t WHERE", "SELECT a FROM t WHERE"),
    ],
)  # fmt: skip
def test_extract_sql(reply: str, expected: str | None) -> None:
    assert extract_sql(reply) == expected


def test_system_prompt_shows_the_schema(
    family: DatabaseFamily, committed: list[Instruction]
) -> None:
    prompt = family.system_prompt(committed[0])
    assert "CREATE TABLE order_items" in prompt and "'delivered'" in prompt
    assert "ask" in prompt.lower()
    assert family.full_prompt(committed[0]) == committed[0].fields["question"]


def _lic_record(db_id: str = "concert_singer") -> dict:
    return {
        "task_id": "sharded-spider-1",
        "task": "database",
        "shards": [
            {"shard_id": 1, "shard": "How many singers do we have?"},
            {"shard_id": 2, "shard": "Only French ones."},
        ],
        "db_id": db_id,
        "schema_sql": "CREATE TABLE singer (singer_id int, name text, country text)",
        "reference_sql": "SELECT count(*) FROM singer WHERE country = 'France'",
        "fully_specified_question": "How many French singers do we have?",
    }


def test_lic_record_with_spider_database(
    family: DatabaseFamily, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from icpo_eval.tasksets import load_lic

    data = tmp_path / "lic.json"
    data.write_text(json.dumps([_lic_record()]))
    (inst,) = load_lic(data)
    assert inst.required_shards is None
    assert family.full_prompt(inst) == "How many French singers do we have?"
    assert "CREATE TABLE singer" in family.system_prompt(inst)

    monkeypatch.setenv("ICPO_EVAL_SPIDER_DIR", str(tmp_path / "spider"))
    expected = tmp_path / "spider" / "concert_singer" / "concert_singer.sqlite"
    with pytest.raises(IcpoError, match=str(expected).replace("\\", "\\\\")):
        family.evaluate(inst, "SELECT 1")

    expected.parent.mkdir(parents=True)
    conn = sqlite3.connect(expected)
    conn.executescript(
        "CREATE TABLE singer (singer_id int, name text, country text);"
        "INSERT INTO singer VALUES (1, 'Ana', 'France'), (2, 'Ben', 'Spain'),"
        "(3, 'Cleo', 'France');"
    )
    conn.commit()
    conn.close()
    assert family.evaluate(inst, "SELECT COUNT(singer_id) FROM singer WHERE country='France'") == 1
    assert family.evaluate(inst, "SELECT COUNT(*) FROM singer") == 0.0
    assert family.evaluate(inst, None) == 0.0


def test_bad_records_raise_one_clear_error(family: DatabaseFamily) -> None:
    bare = Instruction("b", "database", [Shard(1, "x")], fields={"db_id": "shop"})
    with pytest.raises(IcpoError, match="reference_sql"):
        family.evaluate(bare, "SELECT 1")
    with pytest.raises(IcpoError, match="schema_sql"):
        family.system_prompt(bare)
    with pytest.raises(IcpoError, match="invalid Spider db_id"):
        fields = {"db_id": "../etc", "reference_sql": "SELECT 1"}
        family.evaluate(Instruction("p", "database", [Shard(1, "x")], fields=fields), "SELECT 1")


def test_rule_judge_counts_a_query_as_an_answer(committed: list[Instruction]) -> None:
    from icpo_eval.judges import RuleJudge

    inst = committed[0]
    judge = RuleJudge()
    history = [{"role": "user", "content": inst.shards[0].shard}]
    reply = f"```sql\n{inst.fields['reference_sql']}\n```"
    assert judge.classify(inst, reply, history) == "answer_attempt"
    assert judge.classify(inst, "Which country should I filter on?", history) == "clarification"


# --------------------------------------------------------------------------------------------
# Preflight
# --------------------------------------------------------------------------------------------


def _spider(task_id: str, db_id: str, reference_sql: str = "SELECT 1") -> Instruction:
    return Instruction(
        task_id,
        "database",
        [Shard(1, "x")],
        fields={"db_id": db_id, "schema_sql": "CREATE TABLE t (x)", "reference_sql": reference_sql},
    )


def _make_spider_db(root: Path, db_id: str, script: str) -> Path:
    path = root / db_id / f"{db_id}.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(script)
    conn.commit()
    conn.close()
    return path


def test_preflight_names_every_missing_spider_database_in_one_line(
    family: DatabaseFamily, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "spider"
    monkeypatch.setenv("ICPO_EVAL_SPIDER_DIR", str(root))
    _make_spider_db(root, "present", "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    insts = [
        _spider("a", "concert_singer"),
        _spider("b", "present", "SELECT x FROM t"),
        _spider("c", "pets_1"),
        _spider("d", "concert_singer"),  # named once
    ]
    with pytest.raises(IcpoError) as info:
        family.preflight(insts)
    message = str(info.value)
    assert "\n" not in message
    assert "2 Spider database(s) missing" in message
    for db_id in ("concert_singer", "pets_1"):
        assert f"{db_id} (expected {root / db_id / f'{db_id}.sqlite'})" in message
    assert message.count("concert_singer (expected") == 1
    assert "present" not in message
    assert "ICPO_EVAL_SPIDER_DIR" in message and "spider" in message.lower()
    # With both present, the same set passes.
    for db_id in ("concert_singer", "pets_1"):
        _make_spider_db(root, db_id, "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    assert family.preflight(insts) == []


def test_preflight_reports_unreadable_files_and_broken_bundled_scripts(
    family: DatabaseFamily, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import icpo_eval.families.database as db

    root = tmp_path / "spider"
    monkeypatch.setenv("ICPO_EVAL_SPIDER_DIR", str(root))
    junk = root / "junk" / "junk.sqlite"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"this is not a database" * 100)
    bundled_dir = tmp_path / "bundled"
    bundled_dir.mkdir()
    (bundled_dir / "broken.sql").write_text(
        "CREATE TABLE t (x);\nINSERT INTO nowhere VALUES (1);\n"
    )
    monkeypatch.setattr(db, "BUNDLED_DB_DIR", bundled_dir)
    broken = Instruction(
        "k",
        "database",
        [Shard(1, "x")],
        fields={"db_id": "broken", "db_origin": "bundled", "reference_sql": "SELECT 1"},
    )
    no_ref = Instruction("n", "database", [Shard(1, "x")], fields={"db_id": "junk"})
    with pytest.raises(IcpoError) as info:
        family.preflight([_spider("j", "junk"), broken, no_ref, _spider("m", "gone")])
    message = str(info.value)
    assert "\n" not in message
    assert "1 Spider database(s) missing: gone (expected" in message
    assert f"Spider database 'junk' at {junk} is unreadable" in message
    assert "bundled database 'broken' does not build" in message
    assert "n: database instruction without 'reference_sql'" in message


def test_preflight_refuses_a_failing_reference(
    family: DatabaseFamily, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "spider"
    monkeypatch.setenv("ICPO_EVAL_SPIDER_DIR", str(root))
    _make_spider_db(root, "one", "CREATE TABLE t (x);")
    with pytest.raises(IcpoError, match="bad: the reference query fails: no such table"):
        family.preflight([_spider("bad", "one", "SELECT y FROM nowhere")])


def test_preflight_warns_of_empty_references_and_grading_records_them(
    family: DatabaseFamily,
) -> None:
    base = {"db_id": "shop", "db_origin": "bundled"}
    empty = Instruction(
        "empty-1",
        "database",
        [Shard(1, "x")],
        fields={
            **base,
            "reference_sql": "SELECT first_name FROM customers WHERE country = 'Atlantis'",
        },
    )
    empty2 = Instruction("empty-2", "database", [Shard(1, "x")], fields=dict(empty.fields))
    full = Instruction(
        "full",
        "database",
        [Shard(1, "x")],
        fields={
            **base,
            "reference_sql": "SELECT first_name FROM customers",
            "reference_empty": True,
        },
    )
    warnings = family.preflight([empty, full, empty2])
    assert len(warnings) == 1
    assert warnings[0].startswith("2 of 3 database references return no rows")
    assert "empty-1, empty-2" in warnings[0] and "full" not in warnings[0]
    assert empty.fields["reference_empty"] is True and empty2.fields["reference_empty"] is True
    assert "reference_empty" not in full.fields  # a stale mark is cleared

    # An answer that returns no rows matches: scored as compared, but recorded.
    wrong = "SELECT first_name FROM customers WHERE country = 'Nowhere'"
    score, detail = family.grade(empty, wrong)
    assert score == 1.0
    assert detail == {"rows": 0, "expected_rows": 0, "reference_empty": True}
    score, detail = family.grade(empty, "SELECT first_name FROM customers")
    assert score == 0.0 and detail is not None and detail["reference_empty"] is True
    score, detail = family.grade(empty, "SELECT nope FROM customers")
    assert score == 0.0 and detail is not None and detail["reference_empty"] is True
    assert family.grade(empty, None) == (0.0, {"reference_empty": True})
    # Without preflight, grading still notices an empty reference when it runs it.
    unmarked = Instruction("u", "database", [Shard(1, "x")], fields=dict(empty.fields))
    del unmarked.fields["reference_empty"]
    assert family.grade(unmarked, wrong)[1] == {
        "rows": 0,
        "expected_rows": 0,
        "reference_empty": True,
    }
    # A reference with rows has no flag.
    score, detail = family.grade(full, "SELECT first_name FROM customers")
    assert score == 1.0 and detail is not None and "reference_empty" not in detail


def test_committed_set_passes_preflight(
    family: DatabaseFamily, committed: list[Instruction]
) -> None:
    assert len(committed) == 200
    warnings = family.preflight(committed)
    # Every committed reference returns rows (database_make picks questions that do).
    assert warnings == []
    assert not any(i.fields.get("reference_empty") for i in committed)
    assert all(i.fields["reference_rows"] > 0 for i in committed)
