"""The ``database`` family: text-to-SQL over a generated shop database, conditions as shards.

Why a generated database rather than only Spider: Spider's files are large, licensed separately
and not on a fresh clone, while the acceptance run must work offline on one. The bundled database
is a small shop (customers, suppliers, products, orders, order items) whose rows come from
:func:`make_shop_sql` with a fixed seed; the SQL script it writes is committed as
``tasks/database/shop.sql`` (readable, diffable, a test regenerates it byte for byte) and the
SQLite file is built from it on first use into the user cache, keyed by the script's hash.

A question is built from parts (select list, joins, WHERE clauses, GROUP BY, HAVING, ORDER BY,
LIMIT). Shard 1 states the intent and the columns wanted; every later shard adds one condition.
Which shards are *required* is measured, not declared: a shard is required when the reference
query with that condition left out scores 0 against the full reference. So an accidental no-op
filter ("only products in stock" when all are) is honestly optional.

Grading executes the model's query read-only and compares result sets:

* the file is opened with ``mode=ro`` and an authorizer that allows reads only, so ``DROP``,
  ``ATTACH``, ``PRAGMA`` writes and the like fail and the file stays untouched;
* a progress handler aborts any statement after :data:`QUERY_TIME_LIMIT_S` (runaway recursive
  CTEs, cross joins) and at most :data:`MAX_ROWS` rows are fetched;
* rows are compared as multisets of tuples (floats rounded to 2 decimals, 5 == 5.0), in order only
  when the reference has a top-level ORDER BY, and the predicted columns may come in another
  order (Spider's execution accuracy allows it too). Column names never matter.

LiC's database records (Spider) carry ``schema_sql``, ``reference_sql`` and ``db_id``; their
SQLite files are looked up as ``$ICPO_EVAL_SPIDER_DIR/<db_id>/<db_id>.sqlite`` (default
``<cache>/spider/database``, the layout of Spider's release archive).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, register
from icpo_eval.paths import TASKS_DIR, cache_dir
from icpo_eval.records import Instruction, Shard

__all__ = [
    "BUNDLED_DB_DIR",
    "MAX_ROWS",
    "QUERY_TIME_LIMIT_S",
    "DatabaseFamily",
    "Question",
    "bundled_db_path",
    "compare_results",
    "execute_readonly",
    "extract_sql",
    "make_questions",
    "make_shop_sql",
    "spider_db_path",
]

#: Where the bundled databases' SQL scripts live.
BUNDLED_DB_DIR = TASKS_DIR / "database"
#: Wall-clock budget of one query, checked by the progress handler.
QUERY_TIME_LIMIT_S = 2.0
#: Most rows fetched from a query; a bigger result is refused (no reference is that big).
MAX_ROWS = 10_000
#: Virtual-machine steps between two checks of the clock.
_PROGRESS_STEPS = 1_000

# --------------------------------------------------------------------------------------------
# The bundled shop database
# --------------------------------------------------------------------------------------------

_FIRST = (
    "Anna", "Ben", "Clara", "David", "Elena", "Felix", "Grace", "Hiro", "Ines", "Jonas",
    "Karin", "Liam", "Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Samir", "Tara",
    "Umar", "Vera", "Wei", "Yara", "Zoe", "Marco", "Lena", "Omar", "Sofia", "Tom",
)  # fmt: skip
_LAST = (
    "Schmidt", "Martin", "Garcia", "Rossi", "Smith", "Tanaka", "Dubois", "Fischer", "Lopez",
    "Bianchi", "Brown", "Sato", "Moreau", "Weber", "Fernandez", "Ricci", "Taylor", "Suzuki",
    "O'Brien", "Novak", "Kowalski", "Jensen", "Silva", "Wilson", "Nguyen",
)  # fmt: skip
_CITIES = {
    "Germany": ("Berlin", "Munich", "Hamburg"),
    "France": ("Paris", "Lyon", "Marseille"),
    "Spain": ("Madrid", "Barcelona", "Valencia"),
    "Italy": ("Rome", "Milan", "Turin"),
    "United Kingdom": ("London", "Manchester", "Leeds"),
    "United States": ("New York", "Chicago", "Austin"),
    "Canada": ("Toronto", "Vancouver", "Montreal"),
    "Japan": ("Tokyo", "Osaka", "Kyoto"),
}
_TIERS = ("bronze", "silver", "gold")
_STATUSES = ("pending", "shipped", "delivered", "cancelled")
_SUPPLIERS = (
    ("Nordwind Handel GmbH", "Germany"), ("Atelier Lumière", "France"),
    ("Iberia Goods S.L.", "Spain"), ("Casa Verde S.r.l.", "Italy"),
    ("Thames Trading Ltd", "United Kingdom"), ("Great Lakes Supply Co.", "United States"),
    ("Maple Leaf Wholesale", "Canada"), ("Sakura Imports", "Japan"),
)  # fmt: skip
_PRODUCTS = {
    "Electronics": (
        "Wireless Mouse",
        "USB-C Charger",
        "Bluetooth Speaker",
        "Noise-Cancelling Headphones",
        "Webcam HD",
        "Mechanical Keyboard",
        "Smart Watch",
        "Portable SSD",
    ),
    "Books": (
        "The Silent Harbor",
        "Cooking for Two",
        "A Short History of Maps",
        "Learning SQL",
        "Mountain Trails Guide",
        "The Last Orchard",
        "Stars Above Us",
        "Poems of the Sea",
    ),
    "Kitchen": (
        "Chef's Knife",
        "Cast Iron Pan",
        "French Press",
        "Bamboo Cutting Board",
        "Stand Mixer",
        "Espresso Cups (set of 4)",
        "Salad Spinner",
        "Tea Kettle",
    ),
    "Garden": (
        "Garden Hose 20m",
        "Pruning Shears",
        "Herb Seed Kit",
        "Watering Can",
        "Bird Feeder",
        "Raised Bed Kit",
        "Solar Path Lights",
        "Compost Bin",
    ),
    "Toys": (
        "Wooden Train Set",
        "Puzzle 1000 Pieces",
        "Building Blocks",
        "Plush Bear",
        "Kite",
        "Board Game Classic",
        "Remote Control Car",
        "Marble Run",
    ),
    "Sports": (
        "Yoga Mat",
        "Tennis Racket",
        "Running Belt",
        "Dumbbell Pair 5kg",
        "Football",
        "Cycling Gloves",
        "Water Bottle 1L",
        "Jump Rope",
    ),
}
#: Price range (in cents) of each category.
_PRICE_CENTS = {
    "Electronics": (1500, 25000),
    "Books": (800, 4500),
    "Kitchen": (900, 30000),
    "Garden": (500, 9000),
    "Toys": (700, 8000),
    "Sports": (600, 15000),
}

_SCHEMA = """\
-- A small online shop. Generated by icpo_eval.families.database.make_shop_sql(seed={seed});
-- do not edit by hand: the tests regenerate this file byte for byte.
CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    city TEXT NOT NULL,
    country TEXT NOT NULL,      -- full English name, e.g. 'Germany', 'United States'
    signup_date TEXT NOT NULL,  -- ISO date 'YYYY-MM-DD'
    loyalty_tier TEXT NOT NULL  -- 'bronze', 'silver' or 'gold'
);
CREATE TABLE suppliers (
    supplier_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    country TEXT NOT NULL
);
CREATE TABLE products (
    product_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,     -- 'Electronics', 'Books', 'Kitchen', 'Garden', 'Toys', 'Sports'
    price REAL NOT NULL,        -- current price in dollars
    stock INTEGER NOT NULL,     -- units in the warehouse; 0 means out of stock
    supplier_id INTEGER NOT NULL REFERENCES suppliers(supplier_id)
);
CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(customer_id),
    order_date TEXT NOT NULL,   -- ISO date 'YYYY-MM-DD'
    status TEXT NOT NULL        -- 'pending', 'shipped', 'delivered' or 'cancelled'
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(order_id),
    product_id INTEGER NOT NULL REFERENCES products(product_id),
    quantity INTEGER NOT NULL,
    unit_price REAL NOT NULL,   -- price paid per unit, in dollars
    PRIMARY KEY (order_id, product_id)
);
"""


def _in(country: str) -> str:
    """A country as it reads after "in": "the United Kingdom", "Japan"."""
    return f"the {country}" if country.startswith("United") else country


def _q(value: object) -> str:
    """A SQL literal."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def make_shop_sql(seed: int = 0) -> str:
    """The shop database as a SQL script (schema, then one INSERT per row), from ``seed``.

    Constraints that keep questions well defined: full names are unique, sign-up dates are
    distinct, prices are distinct (so "sorted by price" has no ties), every customer and product
    appears in a few orders, a few products are out of stock.
    """
    import datetime

    rng = random.Random(seed)
    lines = [_SCHEMA.format(seed=seed)]

    names = list(itertools.product(_FIRST, _LAST))
    rng.shuffle(names)
    n_customers = 80
    countries = list(_CITIES)
    base = datetime.date(2021, 1, 1)
    signup_days = sorted(rng.sample(range(4 * 365), n_customers))
    rng.shuffle(signup_days)
    for cid in range(1, n_customers + 1):
        first, last = names[cid - 1]
        country = countries[(cid - 1) % len(countries)] if cid <= 16 else rng.choice(countries)
        city = rng.choice(_CITIES[country])
        email = f"{first}.{last}".lower().replace("'", "") + f"{cid}@example.com"
        signup = (base + datetime.timedelta(days=signup_days[cid - 1])).isoformat()
        tier = rng.choices(_TIERS, weights=(5, 3, 2))[0]
        row = (cid, first, last, email, city, country, signup, tier)
        lines.append(f"INSERT INTO customers VALUES ({', '.join(_q(v) for v in row)});")

    for sid, (name, country) in enumerate(_SUPPLIERS, 1):
        lines.append(f"INSERT INTO suppliers VALUES ({sid}, {_q(name)}, {_q(country)});")

    used_cents: set[int] = set()
    products: list[tuple[int, float]] = []
    pid = 0
    for category, items in _PRODUCTS.items():
        lo, hi = _PRICE_CENTS[category]
        for name in items:
            pid += 1
            while True:
                cents = rng.randint(lo // 10, hi // 10) * 10 - 1  # prices end in .x9
                if cents not in used_cents:
                    used_cents.add(cents)
                    break
            price = cents / 100
            stock = 0 if rng.random() < 0.12 else rng.randint(1, 250)
            supplier = rng.randint(1, len(_SUPPLIERS))
            products.append((pid, price))
            lines.append(
                f"INSERT INTO products VALUES ({pid}, {_q(name)}, {_q(category)}, "
                f"{price:.2f}, {stock}, {supplier});"
            )

    n_orders = 240
    order_days = [rng.randrange(2 * 365) for _ in range(n_orders)]
    order_days.sort()
    items: list[str] = []
    for oid in range(1, n_orders + 1):
        customer = rng.randint(1, n_customers)
        day = datetime.date(2023, 1, 1) + datetime.timedelta(days=order_days[oid - 1])
        date = day.isoformat()
        status = rng.choices(_STATUSES, weights=(1, 2, 6, 1.5))[0]
        lines.append(f"INSERT INTO orders VALUES ({oid}, {customer}, {_q(date)}, {_q(status)});")
        for prod, price in rng.sample(products, rng.randint(1, 4)):
            qty = rng.choices((1, 2, 3, 4, 5), weights=(6, 3, 2, 1, 1))[0]
            items.append(f"INSERT INTO order_items VALUES ({oid}, {prod}, {qty}, {price:.2f});")
    lines.extend(items)
    return "\n".join(lines) + "\n"


def _script_path(db_id: str) -> Path:
    return BUNDLED_DB_DIR / f"{db_id}.sql"


def bundled_db_path(db_id: str = "shop") -> Path:
    """The SQLite file of a bundled database, built from its SQL script into the cache if needed.

    The file name carries a hash of the script, so an edited script never meets a stale file;
    building writes a temporary file and renames it, so concurrent runs never see half a file.
    """
    script = _script_path(db_id)
    if not script.is_file():
        raise IcpoError(f"bundled database {db_id!r} has no SQL script at {script}")
    text = script.read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = cache_dir() / "databases" / f"{db_id}-{digest}.sqlite"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
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


def spider_db_path(db_id: str) -> Path:
    """The SQLite file of a Spider database; :class:`IcpoError` naming the path when absent."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", db_id):
        raise IcpoError(f"invalid Spider db_id {db_id!r}")
    path = spider_dir() / db_id / f"{db_id}.sqlite"
    if not path.is_file():
        raise IcpoError(
            f"Spider database {db_id!r} not found: expected {path} (unpack Spider's database/ "
            "folder there or set ICPO_EVAL_SPIDER_DIR to it)"
        )
    return path


# --------------------------------------------------------------------------------------------
# Read-only execution and comparison
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(```|\Z)", re.S)
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
    for m in _FENCE_RE.finditer(response):
        lang, body = m.group(1).lower(), m.group(2)
        if lang in ("sql", "sqlite", "postgresql", "mysql") or (
            lang in ("",) and _STARTS_LIKE_SQL.match(body)
        ):
            if body.strip():
                (blocks if m.group(3) else unclosed).append(body)
    # A fence left open is a reply cut off mid-query: used only when no block is complete.
    blocks = blocks or unclosed
    if blocks:
        sql = blocks[-1].strip()
        # A block holding several statements: take the last query in it.
        parts = [p.strip() for p in sql.split(";") if p.strip()]
        queries = [p for p in parts if _STARTS_LIKE_SQL.match(p)]
        return _tidy(queries[-1] if queries else parts[-1])
    outside = _FENCE_RE.sub(" ", response)
    found = _PLAIN_SQL_RE.findall(outside)
    return _tidy(_cut_prose(found[-1])) if found else None


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
# Question generation
# --------------------------------------------------------------------------------------------

_JOINS = {
    "o": "JOIN orders AS o ON o.customer_id = c.customer_id",
    "oi": "JOIN order_items AS oi ON oi.order_id = o.order_id",
    "s": "JOIN suppliers AS s ON s.supplier_id = p.supplier_id",
    # From order_items outward (category revenue):
    "p_from_oi": "JOIN products AS p ON p.product_id = oi.product_id",
    "o_from_oi": "JOIN orders AS o ON o.order_id = oi.order_id",
    "c_from_o": "JOIN customers AS c ON c.customer_id = o.customer_id",
}


@dataclass(frozen=True)
class _Cond:
    """One shard's condition: the sentence and what it adds to the query."""

    kind: str  # "filter", "join", "having", "order", "limit"
    text: str
    where: str | None = None
    having: str | None = None
    order: tuple[str, str] | None = None  # (ORDER BY clause, key expression for tie checks)
    limit: int | None = None
    joins: tuple[str, ...] = ()
    #: A grouping shard: the SELECT list and GROUP BY it brings (replacing the base's).
    select: str | None = None
    group_by: str | None = None


@dataclass(frozen=True)
class _Base:
    """A template's fixed part: intent sentence, SELECT list, FROM and its own joins."""

    template: str
    intent: str
    select: str
    from_: str
    joins: tuple[str, ...] = ()
    group_by: str | None = None


@dataclass(frozen=True)
class Question:
    """A generated question in structured form, so that tests can build wrong variants."""

    base: _Base
    conds: tuple[_Cond, ...]
    db_id: str = "shop"

    def sql(self, drop: int | None = None, unlimited: bool = False) -> str:
        """The reference query; ``drop`` leaves out condition ``drop`` (0-based), ``unlimited``
        leaves out LIMIT (for tie checks)."""
        conds = [c for i, c in enumerate(self.conds) if i != drop]
        joins = list(self.base.joins)
        for c in conds:
            joins.extend(j for j in c.joins if j not in joins)
        parts = [f"SELECT {self._select(conds)} FROM {self.base.from_}"]
        parts.extend(_JOINS[j] for j in joins)
        where = [c.where for c in conds if c.where]
        if where:
            parts.append("WHERE " + " AND ".join(where))
        group_by = [c.group_by for c in conds if c.group_by] or [self.base.group_by]
        if group_by[0]:
            parts.append(f"GROUP BY {group_by[0]}")
        having = [c.having for c in conds if c.having]
        if having:
            parts.append("HAVING " + " AND ".join(having))
        orders = [c.order for c in conds if c.order]
        if orders:
            parts.append(f"ORDER BY {orders[0][0]}")
        limits = [c.limit for c in conds if c.limit]
        if limits and not unlimited:
            parts.append(f"LIMIT {limits[0]}")
        return " ".join(parts)

    def order_key_sql(self) -> str | None:
        """A query listing the ordering key of every row before LIMIT (to check for ties)."""
        orders = [c.order for c in self.conds if c.order]
        if not orders:
            return None
        full = self.sql(unlimited=True)
        select = self._select(list(self.conds))
        select_part = f"SELECT {select} FROM"
        assert full.startswith(select_part)
        return f"SELECT {select}, {orders[0][1]} AS _key FROM" + full[len(select_part) :]

    def _select(self, conds: list[_Cond]) -> str:
        chosen = [c.select for c in conds if c.select]
        return chosen[0] if chosen else self.base.select


def _year_filter(alias: str, year: int) -> str:
    return f"{alias}.order_date >= '{year}-01-01' AND {alias}.order_date < '{year + 1}-01-01'"


def _status_cond(rng: random.Random, alias: str, joins: tuple[str, ...] = ()) -> _Cond:
    if rng.random() < 0.5:
        return _Cond(
            "filter",
            rng.choice(
                ("Only count orders that were delivered.", "Consider delivered orders only.")
            ),
            where=f"{alias}.status = 'delivered'",
            joins=joins,
        )
    return _Cond(
        "filter",
        rng.choice(("Leave out cancelled orders.", "Ignore orders that were cancelled.")),
        where=f"{alias}.status <> 'cancelled'",
        joins=joins,
    )


def _limit_cond(rng: random.Random, what: str) -> _Cond:
    n = rng.randint(3, 6)
    return _Cond(
        "limit",
        rng.choice((f"I only need the top {n}.", f"Just give me the first {n} {what}.")),
        limit=n,
    )


def _customers_list(rng: random.Random) -> tuple[_Base, list[_Cond], list[_Cond]]:
    base = _Base(
        "customers_list",
        rng.choice(
            (
                "I need a list of our customers with their first and last names.",
                "Can you pull up our customers? I want each one's first name and last name.",
            )
        ),
        "first_name, last_name",
        "customers",
    )
    country = rng.choice(list(_CITIES))
    tier = rng.choice(_TIERS)
    year = rng.randint(2022, 2024)
    conds = [
        _Cond(
            "filter",
            f"Only customers who live in {_in(country)}.",
            where=f"country = {_q(country)}",
        ),
        _Cond(
            "filter",
            f"Just the ones in the {tier} loyalty tier.",
            where=f"loyalty_tier = {_q(tier)}",
        ),
        _Cond(
            "filter",
            f"Only people who signed up in {year} or later.",
            where=f"signup_date >= '{year}-01-01'",
        ),
    ]
    if rng.random() < 0.5:
        order = _Cond(
            "order",
            "Sort them by sign-up date, most recent first.",
            order=("signup_date DESC", "signup_date"),
        )
    else:
        order = _Cond(
            "order",
            "Sort them by sign-up date, earliest first.",
            order=("signup_date ASC", "signup_date"),
        )
    return base, conds, [order, _limit_cond(rng, "customers")]


def _products_list(rng: random.Random) -> tuple[_Base, list[_Cond], list[_Cond]]:
    base = _Base(
        "products_list",
        rng.choice(
            (
                "Show me products from our catalogue: the name and the price of each.",
                "I'd like to see some of our products, with each product's name and price.",
            )
        ),
        "p.name, p.price",
        "products AS p",
    )
    category = rng.choice(list(_PRODUCTS))
    lo, hi = _PRICE_CENTS[category]
    cap = rng.randint(lo // 100 + 5, hi // 100) // 5 * 5 + 5
    country = rng.choice([c for _, c in _SUPPLIERS])
    conds = [
        _Cond(
            "filter",
            f"Only products in the {category} category.",
            where=f"p.category = {_q(category)}",
        ),
        _Cond("filter", f"Only items priced under ${cap}.", where=f"p.price < {cap}"),
        _Cond("filter", "Leave out anything that is out of stock.", where="p.stock > 0"),
        _Cond(
            "join",
            f"Only products from suppliers based in {_in(country)}.",
            where=f"s.country = {_q(country)}",
            joins=("s",),
        ),
    ]
    if rng.random() < 0.5:
        order = _Cond(
            "order", "Sort by price, most expensive first.", order=("p.price DESC", "p.price")
        )
    else:
        order = _Cond("order", "Sort by price, cheapest first.", order=("p.price ASC", "p.price"))
    return base, conds, [order, _limit_cond(rng, "products")]


def _customer_spend(rng: random.Random) -> tuple[_Base, list[_Cond], list[_Cond]]:
    base = _Base(
        "customer_spend",
        rng.choice(
            (
                "I want to know how much each customer has spent in total: show their first "
                "name, last name and the total amount (quantity times unit price, summed).",
                "For each customer, what is the total they have spent with us? Give me first "
                "name, last name and the total (sum of quantity times unit price).",
            )
        ),
        "c.first_name, c.last_name, SUM(oi.quantity * oi.unit_price) AS total_spent",
        "customers AS c",
        joins=("o", "oi"),
        group_by="c.customer_id",
    )
    country = rng.choice(list(_CITIES))
    year = rng.choice((2023, 2024))
    threshold = rng.choice((100, 200, 300, 500))
    conds = [
        _status_cond(rng, "o"),
        _Cond(
            "filter", f"Only customers based in {_in(country)}.", where=f"c.country = {_q(country)}"
        ),
        _Cond("filter", f"Only orders placed in {year}.", where=_year_filter("o", year)),
        _Cond(
            "having",
            f"Only include customers whose total is above ${threshold}.",
            having=f"SUM(oi.quantity * oi.unit_price) > {threshold}",
        ),
    ]
    order = _Cond(
        "order",
        "Rank them by the total, highest first.",
        order=("total_spent DESC", "SUM(oi.quantity * oi.unit_price)"),
    )
    return base, conds, [order, _limit_cond(rng, "customers")]


def _category_revenue(rng: random.Random) -> tuple[_Base, list[_Cond], list[_Cond]]:
    base = _Base(
        "category_revenue",
        rng.choice(
            (
                "What is our revenue? I mean quantity times unit price, summed over the order "
                "items.",
                "I need our revenue figures: the sum of quantity times unit price of the order "
                "items.",
            )
        ),
        "SUM(oi.quantity * oi.unit_price) AS revenue",
        "order_items AS oi",
    )
    grouping = _Cond(
        "group",
        rng.choice(
            (
                "Break it down by product category: show each category and its revenue.",
                "I want it per product category, with the category name next to its revenue.",
            )
        ),
        select="p.category, SUM(oi.quantity * oi.unit_price) AS revenue",
        group_by="p.category",
        joins=("p_from_oi",),
    )
    country = rng.choice(list(_CITIES))
    year = rng.choice((2023, 2024))
    conds = [
        _status_cond(rng, "o", joins=("o_from_oi",)),
        _Cond(
            "filter",
            f"Only orders placed in {year}.",
            where=_year_filter("o", year),
            joins=("o_from_oi",),
        ),
        _Cond(
            "join",
            f"Only orders from customers in {_in(country)}.",
            where=f"c.country = {_q(country)}",
            joins=("o_from_oi", "c_from_o"),
        ),
    ]
    order = _Cond(
        "order",
        "Sort the categories by revenue, highest first.",
        order=("revenue DESC", "SUM(oi.quantity * oi.unit_price)"),
    )
    return base, [grouping, *conds], [order, _limit_cond(rng, "categories")]


def _country_counts(rng: random.Random) -> tuple[_Base, list[_Cond], list[_Cond]]:
    base = _Base(
        "country_counts",
        rng.choice(
            (
                "How many customers do we have in each country? Show the country and the count.",
                "I want a count of customers per country: the country and how many there are.",
            )
        ),
        "country, COUNT(*) AS n_customers",
        "customers",
        group_by="country",
    )
    tier = rng.choice(_TIERS)
    year = rng.randint(2021, 2023)
    k = rng.randint(2, 4)
    conds = [
        _Cond(
            "filter",
            f"Only count customers in the {tier} loyalty tier.",
            where=f"loyalty_tier = {_q(tier)}",
        ),
        _Cond(
            "filter",
            f"Only count people who signed up in {year} or later.",
            where=f"signup_date >= '{year}-01-01'",
        ),
        _Cond(
            "having",
            f"Only list countries with at least {k} such customers.",
            having=f"COUNT(*) >= {k}",
        ),
    ]
    order = _Cond(
        "order", "Sort the countries alphabetically, Z to A.", order=("country DESC", "country")
    )
    return base, conds, [order]


def _customer_orders(rng: random.Random) -> tuple[_Base, list[_Cond], list[_Cond]]:
    base = _Base(
        "customer_orders",
        rng.choice(
            (
                "I need the orders of one of our customers: the order id and the order date.",
                "Can you list a customer's orders for me? Order id and order date, please.",
            )
        ),
        "o.order_id, o.order_date",
        "orders AS o",
        joins=(),
    )
    # The customer is filled in by the caller (it needs the database to pick one with orders).
    year = rng.choice((2023, 2024))
    conds = [
        _status_cond(rng, "o"),
        _Cond("filter", f"Only orders from {year}.", where=_year_filter("o", year)),
    ]
    order = _Cond(
        "order",
        rng.choice(("Newest orders first.", "Sort them by date, newest first.")),
        order=("o.order_date DESC", "o.order_date"),
    )
    return base, conds, [order, _limit_cond(rng, "orders")]


_TEMPLATES: dict[str, Callable[[random.Random], tuple[_Base, list[_Cond], list[_Cond]]]] = {
    "customers_list": _customers_list,
    "products_list": _products_list,
    "customer_spend": _customer_spend,
    "category_revenue": _category_revenue,
    "country_counts": _country_counts,
    "customer_orders": _customer_orders,
}
#: Template names in a stable order.
TEMPLATE_NAMES: tuple[str, ...] = tuple(_TEMPLATES)


def _frequent_customers(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT c.first_name, c.last_name FROM customers AS c JOIN orders AS o "
        "ON o.customer_id = c.customer_id GROUP BY c.customer_id HAVING COUNT(*) >= 5 "
        "ORDER BY c.customer_id"
    ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


def _draw_question(rng: random.Random, template: str, conn: sqlite3.Connection) -> Question:
    base, filters, tail = _TEMPLATES[template](rng)
    fixed: list[_Cond] = []
    if template == "customer_orders":
        first, last = rng.choice(_frequent_customers(conn))
        fixed.append(
            _Cond(
                "join",
                f"The customer is {first} {last}.",
                where=f"c.first_name = {_q(first)} AND c.last_name = {_q(last)}",
                joins=("c_from_o",),
            )
        )
    fixed.extend(c for c in filters if c.kind == "group")
    filters = [c for c in filters if c.kind != "group"]
    k = rng.randint(1, min(3, len(filters)))
    chosen = fixed + rng.sample(filters, k)
    order = [c for c in tail if c.kind == "order"]
    limit = [c for c in tail if c.kind == "limit"]
    if order and rng.random() < 0.7:
        chosen.append(order[0])
        if limit and rng.random() < 0.5:
            chosen.append(limit[0])
    return Question(base, tuple(chosen))


def _run(conn: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()


def _check(q: Question, conn: sqlite3.Connection) -> tuple[list[int], list[tuple[Any, ...]]] | None:
    """Required condition indexes and the reference rows; None if the question is unusable
    (empty result, ties in the ordering, fewer than two required conditions)."""
    ref = _run(conn, q.sql())
    if not ref:
        return None
    key_sql = q.order_key_sql()
    if key_sql is not None:
        keys = [r[-1] for r in _run(conn, key_sql)]
        if len(set(keys)) != len(keys):
            return None
    ordered = is_ordered(q.sql())
    required = [
        i
        for i in range(len(q.conds))
        if not compare_results(ref, _run(conn, q.sql(drop=i)), ordered)
    ]
    if len(required) < 2:
        return None
    return required, ref


def make_questions(n: int, seed: int, db_id: str = "shop") -> list[tuple[Instruction, Question]]:
    """``n`` questions from ``random.Random(seed)`` with their structured form.

    Templates rotate so every set covers all of them; a drawn question that fails
    :func:`_check` is redrawn from the same generator, so the list depends on the seed only.
    """
    if n < 0:
        raise IcpoError("n must be >= 0")
    rng = random.Random(seed)
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_script_path(db_id).read_text(encoding="utf-8"))
        out: list[tuple[Instruction, Question]] = []
        order = list(TEMPLATE_NAMES)
        for i in range(n):
            if i % len(order) == 0:
                rng.shuffle(order)
            template = order[i % len(order)]
            for _ in range(1000):
                q = replace(_draw_question(rng, template, conn), db_id=db_id)
                checked = _check(q, conn)
                if checked is not None:
                    break
            else:  # pragma: no cover - the data make this practically impossible
                raise RuntimeError(f"could not draw a usable {template} question")
            required, ref = checked
            out.append((_instruction(q, required, len(ref), f"database-gen-{seed}-{i:04d}"), q))
        return out
    finally:
        conn.close()


def _instruction(q: Question, required: list[int], n_rows: int, task_id: str) -> Instruction:
    shards = [Shard(1, q.base.intent)] + [Shard(i + 2, c.text) for i, c in enumerate(q.conds)]
    return Instruction(
        task_id=task_id,
        task="database",
        shards=shards,
        required_shards=[1] + [i + 2 for i in required],
        fields={
            "question": " ".join(s.shard for s in shards),
            "db_id": q.db_id,
            "db_origin": "bundled",
            "reference_sql": q.sql(),
            "template": q.base.template,
            "reference_rows": n_rows,
        },
    )


# --------------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _bundled_schema(db_id: str) -> str:
    text = _script_path(db_id).read_text(encoding="utf-8")
    statements = re.findall(r"CREATE TABLE .*?\n\);", text, flags=re.S)
    return "\n".join(statements)


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
    system_prompt_template = "system_database.j2"
    answer_by_extraction = True

    def generate(self, n: int, seed: int) -> list[Instruction]:
        """``n`` questions over the bundled shop database; see :func:`make_questions`."""
        return [inst for inst, _ in make_questions(n, seed)]

    def prompt_variables(self, inst: Instruction) -> dict[str, Any]:
        """The schema: the record's own ``schema_sql`` (LiC/Spider) or the bundled script's
        CREATE TABLE statements (with their comments, which name the allowed values)."""
        schema = inst.fields.get("schema_sql")
        if not isinstance(schema, str) or not schema.strip():
            if inst.fields.get("db_origin") != "bundled":
                raise IcpoError(f"{inst.task_id}: database instruction without 'schema_sql'")
            schema = _bundled_schema(str(inst.fields["db_id"]))
        return {"schema": schema.strip()}

    def full_prompt(self, inst: Instruction) -> str:
        """LiC's ``fully_specified_question`` or our ``question``; else the shards joined."""
        for key in ("fully_specified_question", "question"):
            text = inst.fields.get(key)
            if isinstance(text, str) and text.strip():
                return text
        return super().full_prompt(inst)

    def extract(self, inst: Instruction, response: str) -> str | None:
        """See :func:`extract_sql`."""
        return extract_sql(response)

    def evaluate(self, inst: Instruction, answer: str | None) -> float:
        return self.grade(inst, answer)[0]

    def grade(self, inst: Instruction, answer: str | None) -> tuple[float, dict[str, Any] | None]:
        """1.0 when the answer's rows equal the reference's (see the module docstring).

        The detail records the row counts and, when the query failed, why (``error``). A
        missing Spider database is the user's setup problem, not the model's, so it raises.
        """
        ref_sql = inst.fields.get("reference_sql")
        if not isinstance(ref_sql, str) or not ref_sql.strip():
            raise IcpoError(f"{inst.task_id}: database instruction without 'reference_sql'")
        path = _db_path(inst)
        if answer is None or not answer.strip():
            return 0.0, None
        try:
            ref = execute_readonly(path, ref_sql)
        except QueryError as e:
            raise IcpoError(f"{inst.task_id}: the reference query fails: {e}") from None
        try:
            pred = execute_readonly(path, answer)
        except QueryError as e:
            return 0.0, {"error": str(e)[:200], "expected_rows": len(ref)}
        ok = compare_results(ref, pred, is_ordered(ref_sql))
        return (1.0 if ok else 0.0), {"rows": len(pred), "expected_rows": len(ref)}
