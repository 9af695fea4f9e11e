"""Metrics: pure functions over conversation records.

Performance follows Laban et al. 2025 ("LLMs Get Lost In Multi-Turn Conversation", §4.2):
scores are put on 0–100; for each instruction, over its N runs, P is the mean, A90 (aptitude)
the 90th percentile and U90-10 (unreliability) the 90th minus the 10th percentile; each is then
averaged over instructions. Percentiles use linear interpolation between order statistics
(numpy's default, "type 7" in Hyndman & Fan 1996), so with a single run A90 = P and U90-10 = 0.

Failed conversations (``error`` set) are left out of every score and counted separately; a
finished conversation that never answered scores 0 (its ``final_score`` is 0).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from icpo_eval.records import NON_ANSWERS, Conversation


def scored(convs: Iterable[Conversation]) -> list[Conversation]:
    """The conversations that count for scores: finished without error."""
    return [c for c in convs if c.error is None and c.final_score is not None]


def scores_by_instruction(convs: Iterable[Conversation]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for c in scored(convs):
        out[c.task_id].append(100.0 * float(c.final_score or 0.0))
    return dict(out)


def performance(convs: Iterable[Conversation]) -> dict[str, float | None]:
    """P, A90 and U90-10 (see module doc); None when nothing was scored."""
    per_inst = scores_by_instruction(convs)
    if not per_inst:
        return {"P": None, "A90": None, "U90_10": None}
    p, a90, u = [], [], []
    for scores in per_inst.values():
        arr = np.asarray(scores, dtype=float)
        p.append(arr.mean())
        hi, lo = np.percentile(arr, [90, 10])
        a90.append(hi)
        u.append(hi - lo)
    return {"P": float(np.mean(p)), "A90": float(np.mean(a90)), "U90_10": float(np.mean(u))}


def premature_answer_rate(convs: Iterable[Conversation]) -> float | None:
    """Share of assistant turns that attempt an answer before the task is fully specified."""
    turns = [t for c in scored(convs) for t in c.assistant_turns if t.fully_specified is False]
    if not turns:
        return None
    return sum(t.category == "answer_attempt" for t in turns) / len(turns)


def over_clarification_rate(convs: Iterable[Conversation]) -> float | None:
    """Share of fully specified assistant turns that do not answer (ask, discuss, hedge ...)."""
    turns = [t for c in scored(convs) for t in c.assistant_turns if t.fully_specified]
    if not turns:
        return None
    return sum(t.category in NON_ANSWERS for t in turns) / len(turns)


def summary_row(convs: list[Conversation]) -> dict[str, float | int | None]:
    """The leaderboard figures of one group of conversations."""
    ok = scored(convs)
    per_inst = scores_by_instruction(ok)
    row: dict[str, float | int | None] = dict(performance(ok))
    row["n_instructions"] = len(per_inst)
    row["runs"] = round(len(ok) / len(per_inst), 2) if per_inst else 0
    row["n_conversations"] = len(ok)
    row["failed"] = len(convs) - len(ok)
    row["premature_answer_rate"] = premature_answer_rate(ok)
    row["over_clarification_rate"] = over_clarification_rate(ok)
    return row
