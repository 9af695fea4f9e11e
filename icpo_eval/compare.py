"""Figures with confidence intervals, and paired differences against a baseline model.

The leaderboard gives point estimates; comparing a trained model with its base needs to know
which differences are noise. :func:`interval_table` computes, per (family, mode), the figures
ICPO is about (P, the non-answer rate on underspecified turns, the premature-answer rate, the
over-clarification rate on fully specified turns) and the sharded/full degradation, each with a
percentile-bootstrap interval over instructions (:func:`icpo_eval.metrics.bootstrap_ci`). When a
baseline model is named, every other model's difference from it is computed on the same
resamples (paired: both models answered the same instructions). :func:`category_shares` says
what the replies were, per turn type, since "non-answer" covers a clarifying question as well as
an evasive sentence. The HTML report and ``train/reproduce_icpo.py`` both use these.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from icpo_eval.judges import states_number_in_words
from icpo_eval.metrics import (
    Statistic,
    bootstrap_ci,
    degradation,
    mean_score,
    non_answer_rate,
    over_clarification_rate,
    premature_answer_rate,
    scored,
)
from icpo_eval.records import CATEGORIES, NON_ANSWERS, Conversation, mode_key

#: (name, statistic, factor to put it on 0-100). P is already on 0-100.
FIGURES: tuple[tuple[str, Statistic, float], ...] = (
    ("P", mean_score, 1.0),
    ("non-answer rate, underspecified turns (%)", non_answer_rate, 100.0),
    ("premature-answer rate, underspecified turns (%)", premature_answer_rate, 100.0),
    ("over-clarification rate, fully specified turns (%)", over_clarification_rate, 100.0),
)
DEGRADATION = "degradation P(sharded)/P(full)"


@dataclass
class Estimate:
    """One figure of one model on one (family, mode), with its interval; ``diff*`` is the
    paired difference from the baseline model (None for the baseline or without one)."""

    family: str
    mode: str
    figure: str
    model: str
    value: float | None
    lo: float | None
    hi: float | None
    diff: float | None = None
    diff_lo: float | None = None
    diff_hi: float | None = None
    n_instructions: int = 0


def _scale(t: tuple[float | None, ...], k: float) -> tuple[float | None, ...]:
    return tuple(None if v is None else k * v for v in t)


def interval_table(
    convs: Iterable[Conversation],
    baseline: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    figures: Sequence[tuple[str, Statistic, float]] = FIGURES,
) -> list[Estimate]:
    """Every figure of ``figures`` (default :data:`FIGURES`) per (family, mode, model) with a
    ``level`` interval, plus the sharded/full degradation per (family, model). Rows where a
    figure is undefined for every model (e.g. premature answers in ``full`` mode) are left out.

    ``baseline`` (a model name) comes first in each cell and the others carry their paired
    difference from it, all restricted to the instructions every model in the cell ran; a cell
    the baseline did not run gets no differences.
    """
    cells: dict[tuple[str, str], dict[str, list[Conversation]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for c in convs:
        cells[(c.family, c.mode)][c.model].append(c)

    def ordered(models: Iterable[str]) -> list[str]:
        rest = sorted(m for m in models if m != baseline)
        return [baseline, *rest] if baseline in models else rest

    out: list[Estimate] = []

    def add(family: str, mode: str, name: str, by_model: dict, stat: Statistic, k: float):
        models = ordered(by_model)
        paired = len(models) > 1 and models[0] == baseline
        if paired:
            # Paired means same instructions: every model is restricted to those all ran.
            common = set.intersection(*({c.task_id for c in by_model[m]} for m in models))
            by_model = {m: [c for c in by_model[m] if c.task_id in common] for m in models}
            results = [bootstrap_ci([by_model[m] for m in models], stat, n_boot, seed, level)]
        else:
            results = [bootstrap_ci([by_model[m]], stat, n_boot, seed, level) for m in models]
        rows = []
        for i, m in enumerate(models):
            res, key = (results[0], str(i)) if paired else (results[i], "0")
            value, lo, hi = _scale(res[key], k)
            diff = _scale(res[f"{i}-0"], k) if paired and i > 0 else (None, None, None)
            n = len({c.task_id for c in scored(by_model[m])})
            rows.append(Estimate(family, mode, name, m, value, lo, hi, *diff, n_instructions=n))
        if any(r.value is not None for r in rows):
            out.extend(rows)

    for family, mode in sorted(cells, key=lambda fm: (fm[0], mode_key(fm[1]))):
        for name, stat, k in figures:
            add(family, mode, name, cells[(family, mode)], stat, k)
    for family in sorted({f for f, _ in cells}):
        full, sharded = cells.get((family, "full"), {}), cells.get((family, "sharded"), {})
        both = {m: full[m] + sharded[m] for m in full if m in sharded}
        if both:
            # One group per model: a resampled instruction brings its full and sharded runs.
            add(family, "sharded/full", DEGRADATION, both, degradation, 1.0)
    return out


def _ci(
    value: float | None,
    lo: float | None,
    hi: float | None,
    signed: bool = False,
    digits: int = 1,
) -> str:
    """``value [lo, hi]``; "–" when undefined."""
    if value is None:
        return "–"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if lo is None or hi is None:
        return f.format(value)
    return f"{f.format(value)} [{f.format(lo)}, {f.format(hi)}]"


def _fmt_row(e: Estimate) -> tuple[str, str]:
    """The value and difference cells; the degradation ratio gets two decimals."""
    digits = 2 if e.figure == DEGRADATION else 1
    return (
        _ci(e.value, e.lo, e.hi, digits=digits),
        _ci(e.diff, e.diff_lo, e.diff_hi, signed=True, digits=digits),
    )


def formatted(estimates: Sequence[Estimate]) -> list[dict[str, str]]:
    """Rows of strings for a table: family, mode, figure, model, value [lo, hi], difference."""
    rows = []
    for e in estimates:
        value, diff = _fmt_row(e)
        rows.append(
            {
                "family": e.family,
                "mode": e.mode,
                "figure": e.figure,
                "model": e.model,
                "instructions": str(e.n_instructions),
                "value (95% CI)": value,
                "difference from baseline (95% CI)": "" if e.diff is None else diff,
            }
        )
    return rows


def markdown(rows: Sequence[dict[str, str]]) -> str:
    """A Markdown table of ``rows`` (dicts with the same keys)."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def category_shares(convs: Iterable[Conversation]) -> list[dict[str, str]]:
    """Per (model, family, turn type): the number of assistant turns and the share of each
    judge category, in percent. Turn types: underspecified, fully specified."""
    counts: dict[tuple[str, str, str], Counter] = defaultdict(Counter)
    for c in scored(convs):
        for t in c.assistant_turns:
            if t.fully_specified is None:
                continue
            kind = "fully specified" if t.fully_specified else "underspecified"
            counts[(c.model, c.family, kind)][t.category or "missing"] += 1
    cats = [c for c in CATEGORIES if any(n[c] for n in counts.values())]
    rows = []
    for (model, family, kind), n in sorted(counts.items()):
        total = sum(n.values())
        row = {"model": model, "family": family, "turns": kind, "n": str(total)}
        row |= {cat: f"{100 * n[cat] / total:.1f}" for cat in cats}
        rows.append(row)
    return rows


def strict_non_answer_rate(convs: Iterable[Conversation]) -> float | None:
    """:func:`~icpo_eval.metrics.non_answer_rate` counting a non-answer that states a number in
    words (:func:`states_number_in_words`) as an answer: a lower bound of the judged rate."""
    turns = [t for c in scored(convs) for t in c.assistant_turns if t.fully_specified is False]
    if not turns:
        return None
    held = [t.category in NON_ANSWERS and not states_number_in_words(t.content) for t in turns]
    return sum(held) / len(turns)


STRICT_NON_ANSWER = "non-answer rate, underspecified, number words as answers (%)"
