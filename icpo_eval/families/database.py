"""The ``database`` family: text-to-SQL over a database, conditions as shards.

Generated instances ask about the bundled shop database (:mod:`icpo_eval.families.database_shop`
holds its schema and rows, :mod:`icpo_eval.families.database_make` makes the questions); its
SQLite file is built from the committed script ``tasks/database/shop.sql`` on first use into the
user cache, keyed by the script's hash.

Grading executes the query :func:`extract_sql` finds in the reply read-only and compares result
sets (:mod:`icpo_eval.families.database_exec`: the read-only guards, the time and row limits,
the comparison rules).

LiC's database records (Spider) carry ``schema_sql``, ``reference_sql`` and ``db_id``; their
SQLite files are looked up as ``$ICPO_EVAL_SPIDER_DIR/<db_id>/<db_id>.sqlite`` (default
``<cache>/spider/database``, the layout of Spider's release archive).

:meth:`DatabaseFamily.preflight` checks a run's instructions before the first model call: every
database present and readable (one error naming every missing one and where it is expected),
every reference query running, and which references return no rows (a warning, and a mark on
the instruction that grading records).
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, register
from icpo_eval.families.database_exec import (
    QueryError,
    compare_results,
    execute_readonly,
    is_ordered,
)
from icpo_eval.families.text import BRANCHING, PLACEHOLDER, fenced_blocks, outside_fences
from icpo_eval.paths import TASKS_DIR, cache_dir
from icpo_eval.records import Instruction

__all__ = [
    "BUNDLED_DB_DIR",
    "DatabaseFamily",
    "bundled_db_path",
    "bundled_schema_path",
    "bundled_script_path",
    "bundled_sql",
    "extract_sql",
    "SPIDER_HOWTO",
    "spider_db_path",
    "spider_expected_path",
]

#: Where the bundled databases' SQL scripts live.
BUNDLED_DB_DIR = TASKS_DIR / "database"

# --------------------------------------------------------------------------------------------
# Where the databases are
# --------------------------------------------------------------------------------------------


def bundled_script_path(db_id: str) -> Path:
    """The SQL script of a bundled database's rows (it may not exist)."""
    return BUNDLED_DB_DIR / f"{db_id}.sql"


def bundled_schema_path(db_id: str) -> Path:
    """The SQL script of a bundled database's schema, written by hand (it may not exist: then
    the rows script holds its own CREATE TABLE statements)."""
    return BUNDLED_DB_DIR / f"{db_id}.schema.sql"


def bundled_sql(db_id: str) -> str:
    """The whole SQL script of a bundled database: its schema, then its rows."""
    script = bundled_script_path(db_id)
    if not script.is_file():
        raise IcpoError(f"bundled database {db_id!r} has no SQL script at {script}")
    schema = bundled_schema_path(db_id)
    head = schema.read_text(encoding="utf-8") if schema.is_file() else ""
    return head + script.read_text(encoding="utf-8")


def bundled_db_path(db_id: str = "shop") -> Path:
    """The SQLite file of a bundled database, built from its SQL scripts into the cache if needed.

    The file name carries a hash of the scripts, so an edited script never meets a stale file;
    building writes a temporary file and renames it, so concurrent runs never see half a file.
    The temporary name is unique per process *and thread*: API runs grade in worker threads, and
    on a cold cache several of them build at once.
    """
    text = bundled_sql(db_id)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = cache_dir() / "databases" / f"{db_id}-{digest}.sqlite"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp)
        try:
            conn.executescript(text)
            conn.commit()
        finally:
            conn.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def spider_dir() -> Path:
    """Root of Spider's database folders; ``ICPO_EVAL_SPIDER_DIR`` overrides it."""
    env = os.environ.get("ICPO_EVAL_SPIDER_DIR")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "spider" / "database"


#: How to get Spider's databases, said by every error about a missing one.
SPIDER_HOWTO = (
    "download Spider (https://yale-lily.github.io/spider) and unpack its database/ folder "
    "there, or set ICPO_EVAL_SPIDER_DIR to a folder holding <db_id>/<db_id>.sqlite"
)


def spider_expected_path(db_id: str) -> Path:
    """Where the SQLite file of a Spider database is looked for (it may not exist);
    :class:`IcpoError` for a db_id that could escape :func:`spider_dir`."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", db_id):
        raise IcpoError(f"invalid Spider db_id {db_id!r}")
    return spider_dir() / db_id / f"{db_id}.sqlite"


def spider_db_path(db_id: str) -> Path:
    """The SQLite file of a Spider database; :class:`IcpoError` naming the path when absent."""
    path = spider_expected_path(db_id)
    if not path.is_file():
        raise IcpoError(f"Spider database {db_id!r} not found: expected {path} ({SPIDER_HOWTO})")
    return path


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_STARTS_LIKE_SQL = re.compile(r"^\s*(?:--[^\n]*\n\s*)*(?:SELECT|WITH)\b", re.IGNORECASE)
#: A query in running text: upper-case SELECT ... FROM (prose uses "select" in lower case),
#: up to a semicolon, a blank line or the end.
_PLAIN_SQL_RE = re.compile(
    r"(?<![\w`])(?:WITH\b[^;`]*?\bSELECT|SELECT)\b(?:(?!\n\s*\n)[^;`])*?\bFROM\b(?:(?!\n\s*\n)[^;`])*",
)


def extract_sql(response: str) -> str | None:
    """The SQL query a reply commits to, or None.

    The last complete fenced block labelled ``sql`` (or unlabelled but starting with
    SELECT/WITH) wins, a block left open (a truncated reply) only when there is no other;
    without one, the last upper-case ``SELECT ... FROM ...`` statement of the text, up to a
    semicolon or a blank line. Lower-case "select ... from" in prose ("please select the
    customers from Germany") is not taken, so that a question to the user is not read as an
    answer (the family sets :attr:`Family.answer_by_extraction`).
    """
    if not response:
        return None
    blocks, unclosed = [], []
    for fence in fenced_blocks(response, unclosed=True):
        lang, body = fence.lang, fence.body
        if lang in ("sql", "sqlite", "postgresql", "mysql") or (
            lang in ("",) and _STARTS_LIKE_SQL.match(body)
        ):
            if body.strip():
                (blocks if fence.closed else unclosed).append(body)
    # A fence left open is a reply cut off mid-query: used only when no block is complete.
    blocks = blocks or unclosed
    if blocks:
        sql = blocks[-1].strip()
        # A block holding several statements: take the last query in it.
        parts = [p.strip() for p in sql.split(";") if p.strip()]
        queries = [p for p in parts if _STARTS_LIKE_SQL.match(p)]
        return _tidy(queries[-1] if queries else parts[-1])
    outside = outside_fences(response, unclosed=True)
    found = _PLAIN_SQL_RE.findall(outside)
    return _tidy(_cut_prose(found[-1])) if found else None


#: Parameters a template leaves for the user: ``:tier``, ``@year``, ``?`` (outside strings), and
#: ``...`` where a condition or a value belongs.
_SQL_PARAM_RE = re.compile(r"(?<![:\w]):[A-Za-z_]\w*|(?<!\w)@[A-Za-z_]\w*|\?|\.\.\.|…")
_SQL_STRING_RE = re.compile(r"'(?:[^']|'')*'")
_SQL_COMMENT_RE = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_HAS_FROM_RE = re.compile(r"\bFROM\b", re.I)


def _queries(response: str) -> list[str]:
    """Every complete query of the reply's SQL blocks (each block's last), normalised."""
    out = []
    for fence in fenced_blocks(response, unclosed=False):
        if fence.lang in ("sql", "sqlite", "postgresql", "mysql", ""):
            parts = [p.strip() for p in fence.body.split(";") if _STARTS_LIKE_SQL.match(p)]
            if parts:
                out.append(" ".join(_SQL_COMMENT_RE.sub(" ", parts[-1]).split()).lower())
    return out


def sql_answer_problem(response: str, answer: str) -> str | None:
    """See :meth:`Family.answer_problem`: ``answer`` is the query :func:`extract_sql` took."""
    code = _SQL_COMMENT_RE.sub(" ", answer)
    if not _STARTS_LIKE_SQL.match(code) or not _HAS_FROM_RE.search(code):
        return "fragment"
    strings = _SQL_STRING_RE.findall(code)
    bare = _SQL_STRING_RE.sub("''", code)
    if PLACEHOLDER.search(code) or _SQL_PARAM_RE.search(bare):
        return "template"
    if any(s.strip("'").strip() in ("", "...", "…", "?", "X", "XXX") for s in strings if s != "''"):
        return "template"
    prose = outside_fences(response, unclosed=True)
    if len(set(_queries(response))) >= 2 and BRANCHING.search(prose):
        return "alternatives"
    return None


#: How a continuation line of a query starts; a line that starts otherwise is prose.
_SQL_LINE_RE = re.compile(
    r"^\s*(?:[),(]|(?:FROM|WHERE|JOIN|INNER|LEFT|RIGHT|CROSS|NATURAL|ON|AND|OR|NOT|GROUP|ORDER|"
    r"HAVING|LIMIT|OFFSET|UNION|INTERSECT|EXCEPT|SELECT|AS|CASE|WHEN|THEN|ELSE|END|"
    r"DISTINCT|IN|BETWEEN|LIKE|IS|ASC|DESC)\b|\s)"
)


def _cut_prose(sql: str) -> str:
    """A plain-text query ends at the first following line that does not continue it."""
    lines = sql.split("\n")
    kept = [lines[0]]
    for line in lines[1:]:
        if not line.strip() or not _SQL_LINE_RE.match(line):
            break
        kept.append(line)
    return "\n".join(kept)


def _tidy(sql: str) -> str:
    sql = sql.strip().rstrip(";").strip()
    return re.sub(r"[ \t]+\n", "\n", sql)


# --------------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _bundled_schema(db_id: str) -> str:
    text = bundled_sql(db_id)
    statements = re.findall(r"CREATE TABLE .*?\n\);", text, flags=re.S)
    return "\n".join(statements)


#: Task ids of empty references named by the preflight warning.
_SHOWN_IDS = 5


def _line(error: BaseException) -> str:
    """An error's message on one line, at most 200 characters."""
    return " ".join(str(error).split())[:200]


def _db_path(inst: Instruction) -> Path:
    db_id = inst.fields.get("db_id")
    if not isinstance(db_id, str) or not db_id:
        raise IcpoError(f"{inst.task_id}: database instruction without a 'db_id'")
    if inst.fields.get("db_origin") == "bundled":
        return bundled_db_path(db_id)
    return spider_db_path(db_id)


@register
class DatabaseFamily(Family):
    """Text-to-SQL; graded by executing the query read-only and comparing result sets."""

    name = "database"
    answer_shape = (
        "one complete SQL query that answers the request (not a fragment such as a lone "
        "WHERE clause, not templated with placeholders, not two queries for two readings)"
    )
    system_prompt_template = "system_database.j2"
    answer_by_extraction = True
    maker = "icpo_eval.families.database_make"
    #: LiC's ``fully_specified_question`` or our ``question``.
    full_prompt_fields = ("fully_specified_question", "question")
    #: The system prompt's "Select exactly the columns the user asks for".
    asked_about = ("column", "columns")

    def prompt_variables(self, inst: Instruction) -> dict[str, Any]:
        """The schema: the record's own ``schema_sql`` (LiC/Spider) or the bundled script's
        CREATE TABLE statements (with their comments, which name the allowed values)."""
        schema = inst.fields.get("schema_sql")
        if not isinstance(schema, str) or not schema.strip():
            if inst.fields.get("db_origin") != "bundled":
                raise IcpoError(f"{inst.task_id}: database instruction without 'schema_sql'")
            schema = _bundled_schema(str(inst.fields["db_id"]))
        return {"schema": schema.strip()}

    def extract(self, inst: Instruction, response: str) -> str | None:
        """See :func:`extract_sql`."""
        return extract_sql(response)

    def answer_problem(self, inst: Instruction, response: str, answer: str) -> str | None:
        """See :func:`sql_answer_problem`."""
        return sql_answer_problem(response, answer)

    def preflight(self, instructions: list[Instruction]) -> list[str]:
        """Check that every instruction can be graded, before any model call.

        Raises :class:`IcpoError`, one line naming every problem, when any is found:

        - every Spider (non-bundled) database whose file is missing, each db_id with the path
          where it is expected (:func:`spider_expected_path`, under ``ICPO_EVAL_SPIDER_DIR``
          or ``<cache>/spider/database``), and how to get them (:data:`SPIDER_HOWTO`);
        - a database file that SQLite cannot read (not a database, no permission), a bundled
          database whose SQL scripts fail to build, an invalid or absent ``db_id``, an absent
          ``reference_sql``;
        - a reference query that fails (grading would raise on it).

        The reference queries run in the sandboxed worker of
        :func:`~icpo_eval.families.database_exec.execute_readonly`, with its time and row
        limits, once per instruction. A reference that returns no rows cannot tell a right
        query from a wrong one: every query that returns no rows matches it. Such instructions
        are marked (``inst.fields["reference_empty"] = True``, the mark of a previous preflight
        cleared on the others) and are named in the one warning line returned (their count and
        the first few task ids). They are scored as the comparison gives it (an answer that
        returns no rows scores 1), and :meth:`grade` records ``reference_empty: True`` in the
        turn detail, so that reports can tell those successes apart or leave them out.
        """
        problems: list[str] = []
        missing: dict[str, Path] = {}
        databases: dict[tuple[str, str], Path | None] = {}  # (origin, db_id) -> file or None
        for inst in instructions:
            ref_sql = inst.fields.get("reference_sql")
            if not isinstance(ref_sql, str) or not ref_sql.strip():
                problems.append(f"{inst.task_id}: database instruction without 'reference_sql'")
            db_id = inst.fields.get("db_id")
            if not isinstance(db_id, str) or not db_id:
                problems.append(f"{inst.task_id}: database instruction without a 'db_id'")
                continue
            bundled = inst.fields.get("db_origin") == "bundled"
            key = ("bundled" if bundled else "spider", db_id)
            if key in databases:
                continue
            databases[key] = None
            if bundled:
                try:
                    databases[key] = bundled_db_path(db_id)
                    _bundled_schema(db_id)
                except (IcpoError, sqlite3.Error, OSError) as e:
                    problems.append(f"bundled database {db_id!r} does not build: {_line(e)}")
                continue
            try:
                path = spider_expected_path(db_id)
            except IcpoError as e:
                problems.append(f"{inst.task_id}: {e}")
                continue
            if not path.is_file():
                missing[db_id] = path
                continue
            try:
                execute_readonly(path, "SELECT count(*) FROM sqlite_master")
            except QueryError as e:
                problems.append(f"Spider database {db_id!r} at {path} is unreadable: {_line(e)}")
                continue
            databases[key] = path
        if missing:
            listed = ", ".join(f"{db_id} (expected {path})" for db_id, path in missing.items())
            problems.insert(
                0,
                f"{len(missing)} Spider database(s) missing: {listed}; {SPIDER_HOWTO} "
                f"(now looked for under {spider_dir()})",
            )
        if problems:
            raise IcpoError("; ".join(problems))

        empty: list[str] = []
        for inst in instructions:
            origin = "bundled" if inst.fields.get("db_origin") == "bundled" else "spider"
            path = databases[(origin, str(inst.fields["db_id"]))]
            assert path is not None  # every problem above has raised
            try:
                rows = execute_readonly(path, str(inst.fields["reference_sql"]))
            except QueryError as e:
                problems.append(f"{inst.task_id}: the reference query fails: {_line(e)}")
                continue
            if rows:
                inst.fields.pop("reference_empty", None)
            else:
                inst.fields["reference_empty"] = True
                empty.append(inst.task_id)
        if problems:
            raise IcpoError("; ".join(problems))
        if not empty:
            return []
        shown = ", ".join(empty[:_SHOWN_IDS]) + (", ..." if len(empty) > _SHOWN_IDS else "")
        return [
            f"{len(empty)} of {len(instructions)} database references return no rows, so any "
            "query returning no rows matches them (scored as compared, recorded as "
            f"reference_empty in the turn detail): {shown}"
        ]

    def evaluate(self, inst: Instruction, answer: str | None) -> float:
        return self.grade(inst, answer)[0]

    def grade(self, inst: Instruction, answer: str | None) -> tuple[float, dict[str, Any] | None]:
        """1.0 when the answer's rows equal the reference's (:func:`compare_results`).

        The detail records the row counts and, when the query failed, why (``error``). A
        missing Spider database is the user's setup problem, not the model's, so it raises.

        A reference that returns no rows (found here, or marked by :meth:`preflight`) is
        matched by every query that returns no rows: the score stays what the comparison
        gives, and the detail says ``reference_empty: True`` (also for a turn without a query,
        when preflight marked the instruction), so that such a success is never silent.
        """
        ref_sql = inst.fields.get("reference_sql")
        if not isinstance(ref_sql, str) or not ref_sql.strip():
            raise IcpoError(f"{inst.task_id}: database instruction without 'reference_sql'")
        path = _db_path(inst)
        flagged = {"reference_empty": True} if inst.fields.get("reference_empty") else {}
        if answer is None or not answer.strip():
            return 0.0, (flagged or None)
        try:
            ref = execute_readonly(path, ref_sql)
        except QueryError as e:
            raise IcpoError(f"{inst.task_id}: the reference query fails: {e}") from None
        if not ref:
            flagged = {"reference_empty": True}
        try:
            pred = execute_readonly(path, answer)
        except QueryError as e:
            return 0.0, {"error": str(e)[:200], "expected_rows": len(ref), **flagged}
        ok = compare_results(ref, pred, is_ordered(ref_sql))
        return (1.0 if ok else 0.0), {"rows": len(pred), "expected_rows": len(ref), **flagged}
