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

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Iterable

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


def mean_score(convs: Iterable[Conversation]) -> float | None:
    """P alone (mean over instructions of the mean 0-100 score over runs): what
    :func:`performance` returns as ``P``, without the percentiles (fast, for the bootstrap)."""
    per_inst = scores_by_instruction(convs)
    if not per_inst:
        return None
    return sum(sum(s) / len(s) for s in per_inst.values()) / len(per_inst)


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


def pass_hat_k(convs: Iterable[Conversation], k: int) -> float | None:
    """pass^k (Yao et al. 2024, "tau-bench"): the chance that k i.i.d. runs all succeed.

    For each instruction with n scored runs of which c succeeded (``final_score == 1.0``), the
    unbiased estimate C(c, k) / C(n, k); averaged over instructions. Instructions with fewer than
    k scored runs are skipped (failed runs do not count towards n); None if none has k runs.
    Pass the conversations of one mode: runs are grouped by ``task_id`` only.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    runs: dict[str, list[bool]] = defaultdict(list)
    for c in scored(convs):
        runs[c.task_id].append(c.final_score == 1.0)
    per_inst = [
        math.comb(sum(ok), k) / math.comb(len(ok), k) for ok in runs.values() if len(ok) >= k
    ]
    return sum(per_inst) / len(per_inst) if per_inst else None


def degradation(
    convs: Iterable[Conversation], mode: str = "sharded", reference: str = "full"
) -> float | None:
    """P(mode) / P(reference), P as in :func:`performance` on that mode's conversations only.

    The multi-turn degradation of Laban et al. 2025, as a ratio (1.0 = no loss). None when
    either mode has no scored conversation or P(reference) is 0.
    """
    convs = list(convs)
    p = performance(c for c in convs if c.mode == mode)["P"]
    ref = performance(c for c in convs if c.mode == reference)["P"]
    if p is None or ref is None or ref == 0:
        return None
    return p / ref


def degradations(convs: Iterable[Conversation]) -> dict[str, float | None]:
    """:func:`degradation` of ``sharded`` and ``concat`` against ``full``."""
    convs = list(convs)
    return {
        "sharded/full": degradation(convs, "sharded", "full"),
        "concat/full": degradation(convs, "concat", "full"),
    }


def non_answer_share_by_progress(
    convs: Iterable[Conversation], buckets: int = 5, shard_counts: dict[str, int] | None = None
) -> list[float | None]:
    """Share of non-answer turns by conversation progress (ICPO paper, Fig. 1).

    For every assistant turn of a scored ``sharded`` conversation, progress = (distinct shards
    revealed by the user turns before it) / (the instruction's number of shards). Bucket i
    (0-based) holds progress in (i/buckets, (i+1)/buckets]; progress 0 goes to bucket 0. A
    bucket's value is the share of its turns whose category is in ``NON_ANSWERS``; None if empty.

    The instruction's shard count comes from ``shard_counts`` (task_id -> count) when given,
    else from the record's ``n_shards``. Records written before ``n_shards`` existed fall back to
    the number of distinct shard ids seen for that task_id in *any* given conversation (any mode,
    failed ones included): exact when a ``full`` or ``concat`` conversation is passed along (its
    single user turn lists every shard), otherwise an undercount when every sharded run stopped
    early, which overstates progress. Progress above 1 counts as 1.
    """
    n, non = _progress_counts(convs, buckets, shard_counts)
    return [non[i] / n[i] if n[i] else None for i in range(buckets)]


def turns_by_progress(
    convs: Iterable[Conversation], buckets: int = 5, shard_counts: dict[str, int] | None = None
) -> list[int]:
    """The number of assistant turns in each bucket of :func:`non_answer_share_by_progress`."""
    return _progress_counts(convs, buckets, shard_counts)[0]


def _progress_counts(
    convs: Iterable[Conversation], buckets: int, shard_counts: dict[str, int] | None
) -> tuple[list[int], list[int]]:
    """(assistant turns, non-answer turns) per progress bucket."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    convs = list(convs)
    seen: dict[str, set[int]] = defaultdict(set)
    for c in convs:
        for t in c.turns:
            seen[c.task_id].update(t.shards)
    counts = {task: len(ids) for task, ids in seen.items()}
    n = [0] * buckets
    non = [0] * buckets
    for c in scored(convs):
        total = (shard_counts or {}).get(c.task_id) or c.n_shards or counts.get(c.task_id, 0)
        if c.mode != "sharded" or total <= 0:
            continue
        revealed: set[int] = set()
        for t in c.turns:
            if t.role == "user":
                revealed.update(t.shards)
                continue
            # Integer form of ceil(progress * buckets) - 1, exact at the bucket edges.
            i = -(-len(revealed) * buckets // total) - 1
            i = min(max(i, 0), buckets - 1)
            n[i] += 1
            non[i] += t.category in NON_ANSWERS
    return n, non


def mean_first_answer_turn(convs: Iterable[Conversation]) -> dict[str, float | int | None]:
    """Mean 1-based assistant turn of the first answer attempt (ICPO paper, Fig. 2).

    Over scored conversations: ``mean`` among those that answered (None if none did),
    ``n_answered``, and ``n_never`` (finished without any answer attempt).
    """
    firsts = [c.first_answer_turn for c in scored(convs)]
    answered = [f for f in firsts if f is not None]
    return {
        "mean": sum(answered) / len(answered) if answered else None,
        "n_answered": len(answered),
        "n_never": len(firsts) - len(answered),
    }


def mean_icpo_reward(convs: Iterable[Conversation]) -> dict[str, float | None]:
    """Mean ICPO reward (DESIGN.md, Judges) of the assistant turns of scored conversations.

    ``all`` plus the split by ``fully_specified`` (True / False); turns without a reward are
    skipped, and a turn whose ``fully_specified`` is None counts only in ``all``. None where a
    group has no turn.
    """
    groups: dict[str, list[float]] = {"all": [], "fully_specified": [], "underspecified": []}
    for c in scored(convs):
        for t in c.assistant_turns:
            if t.reward is None:
                continue
            groups["all"].append(t.reward)
            if t.fully_specified is True:
                groups["fully_specified"].append(t.reward)
            elif t.fully_specified is False:
                groups["underspecified"].append(t.reward)
    return {name: sum(r) / len(r) if r else None for name, r in groups.items()}


def summary_row(convs: list[Conversation]) -> dict[str, float | int | None]:
    """The leaderboard figures of one group of conversations."""
    ok = scored(convs)
    per_inst = scores_by_instruction(ok)
    row: dict[str, float | int | None] = dict(performance(ok))
    row["n_instructions"] = len(per_inst)
    row["runs"] = round(len(ok) / len(per_inst), 2) if per_inst else 0
    row["n_conversations"] = len(ok)
    row["failed"] = len(convs) - len(ok)
    # Conversations that hit the turn cap before every shard was said (--max-turns too low).
    row["capped"] = sum(bool(c.capped_unrevealed) for c in ok)
    row["premature_answer_rate"] = premature_answer_rate(ok)
    row["over_clarification_rate"] = over_clarification_rate(ok)
    row["mean_first_answer_turn"] = mean_first_answer_turn(ok)["mean"]
    row["mean_reward"] = mean_icpo_reward(ok)["all"]
    return row


def non_answer_rate(convs: Iterable[Conversation]) -> float | None:
    """Share of underspecified assistant turns that do not commit to an answer (what ICPO
    raises). Not 1 − premature-answer rate: an empty reply (``missing``) is neither."""
    turns = [t for c in scored(convs) for t in c.assistant_turns if t.fully_specified is False]
    if not turns:
        return None
    return sum(t.category in NON_ANSWERS for t in turns) / len(turns)


Statistic = Callable[[list[Conversation]], "float | None"]


def bootstrap_ci(
    groups: list[list[Conversation]],
    statistic: Statistic,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float | None, float | None, float | None]]:
    """Point estimates and percentile-bootstrap intervals of ``statistic`` on several groups of
    conversations of the same instructions (e.g. a base and a trained model), and of each
    group's difference from the first.

    Instructions are resampled with replacement, all of an instruction's conversations (its runs
    and turns) moving together, because they are not independent; the same resample is used for
    every group, so the interval of a difference is a paired one. Returns ``{"0": (point, lo,
    hi), "1": ..., "1-0": ...}``; None where the statistic is undefined.
    """
    by_task: list[dict[str, list[Conversation]]] = []
    for g in groups:
        d: dict[str, list[Conversation]] = defaultdict(list)
        for c in g:
            d[c.task_id].append(c)
        by_task.append(d)
    tasks = sorted(set().union(*[set(d) for d in by_task]))
    rng = np.random.default_rng(seed)

    # An instruction drawn twice must count twice: statistics that average per instruction
    # (P) group by task_id, so the k-th draw of a resample gets a task_id of its own. The
    # relabelled copies are made once per (group, instruction, k) and reused across resamples.
    relabelled: list[dict[tuple[str, int], list[Conversation]]] = [{} for _ in groups]

    def draw(i: int, t: str, k: int) -> list[Conversation]:
        key = (t, k)
        if key not in relabelled[i]:
            relabelled[i][key] = [
                dataclasses.replace(c, task_id=f"{t}#{k}") for c in by_task[i].get(t, [])
            ]
        return relabelled[i][key]

    def stat(i: int, sample: list[str] | None) -> float | None:
        if sample is None:
            return statistic([c for t in tasks for c in by_task[i].get(t, [])])
        return statistic([c for k, t in enumerate(sample) for c in draw(i, t, k)])

    points = [stat(i, None) for i in range(len(groups))]
    draws: list[list[float | None]] = [[] for _ in groups]
    for _ in range(n_boot):
        sample = [tasks[j] for j in rng.integers(0, len(tasks), len(tasks))]
        for i in range(len(groups)):
            draws[i].append(stat(i, sample))
    alpha = (1 - level) / 2

    def interval(values: list[float | None]) -> tuple[float | None, float | None]:
        vals = [v for v in values if v is not None]
        if not vals:
            return None, None
        return float(np.quantile(vals, alpha)), float(np.quantile(vals, 1 - alpha))

    out: dict[str, tuple[float | None, float | None, float | None]] = {}
    for i in range(len(groups)):
        out[str(i)] = (points[i], *interval(draws[i]))
        if i == 0:
            continue
        diffs = [None if a is None or b is None else b - a for a, b in zip(draws[0], draws[i])]
        p0, pi = points[0], points[i]
        out[f"{i}-0"] = (None if p0 is None or pi is None else pi - p0, *interval(diffs))
    return out
