"""Making the ``database`` family's tasks: text-to-SQL questions over the bundled shop.

A question is built from parts (select list, joins, WHERE clauses, GROUP BY, HAVING, ORDER BY,
LIMIT). Shard 1 states the intent and the columns wanted; every later shard adds one condition.
Which shards are *required* is measured, not declared: a shard is required when the reference
query with that condition left out scores 0 against the full reference. So an accidental no-op
filter ("only products in stock" when all are) is honestly optional.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families.database import bundled_sql
from icpo_eval.families.database_exec import compare_results, is_ordered
from icpo_eval.families.database_shop import (
    CITIES,
    PRICE_CENTS,
    PRODUCTS,
    SUPPLIERS,
    TIERS,
    in_country,
    sql_literal,
)
from icpo_eval.records import Instruction, Shard

__all__ = ["TEMPLATE_NAMES", "Question", "generate", "make_questions"]

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
    country = rng.choice(list(CITIES))
    tier = rng.choice(TIERS)
    year = rng.randint(2022, 2024)
    conds = [
        _Cond(
            "filter",
            f"Only customers who live in {in_country(country)}.",
            where=f"country = {sql_literal(country)}",
        ),
        _Cond(
            "filter",
            f"Just the ones in the {tier} loyalty tier.",
            where=f"loyalty_tier = {sql_literal(tier)}",
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
    category = rng.choice(list(PRODUCTS))
    lo, hi = PRICE_CENTS[category]
    cap = rng.randint(lo // 100 + 5, hi // 100) // 5 * 5 + 5
    country = rng.choice([c for _, c in SUPPLIERS])
    conds = [
        _Cond(
            "filter",
            f"Only products in the {category} category.",
            where=f"p.category = {sql_literal(category)}",
        ),
        _Cond("filter", f"Only items priced under ${cap}.", where=f"p.price < {cap}"),
        _Cond("filter", "Leave out anything that is out of stock.", where="p.stock > 0"),
        _Cond(
            "join",
            f"Only products from suppliers based in {in_country(country)}.",
            where=f"s.country = {sql_literal(country)}",
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
    country = rng.choice(list(CITIES))
    year = rng.choice((2023, 2024))
    threshold = rng.choice((100, 200, 300, 500))
    conds = [
        _status_cond(rng, "o"),
        _Cond(
            "filter",
            f"Only customers based in {in_country(country)}.",
            where=f"c.country = {sql_literal(country)}",
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
    country = rng.choice(list(CITIES))
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
            f"Only orders from customers in {in_country(country)}.",
            where=f"c.country = {sql_literal(country)}",
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
    tier = rng.choice(TIERS)
    year = rng.randint(2021, 2023)
    k = rng.randint(2, 4)
    conds = [
        _Cond(
            "filter",
            f"Only count customers in the {tier} loyalty tier.",
            where=f"loyalty_tier = {sql_literal(tier)}",
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
                where=f"c.first_name = {sql_literal(first)} AND c.last_name = {sql_literal(last)}",
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
        conn.executescript(bundled_sql(db_id))
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


def generate(n: int, seed: int) -> list[Instruction]:
    """``n`` questions over the bundled shop database; see :func:`make_questions`."""
    return [inst for inst, _ in make_questions(n, seed)]
