"""Leaderboard CSV: one row per (model, family, mode) over one or many run directories.

Run directories are merged. Each model also gets aggregate rows, one per mode, with family
``all``: they pool the model's conversations of every family (P etc. are then averaged over all
its instructions). Modes are never pooled: P over full and sharded together would mean nothing.
With one family the aggregate repeats that family's figures; filter on ``family == "all"``.
Runs are only merged when their settings agree (:data:`SETTINGS`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from icpo_eval.errors import IcpoError
from icpo_eval.metrics import summary_row
from icpo_eval.records import Conversation, RunSpec
from icpo_eval.store import CONVERSATIONS, load_run

ALL = "all"  # the family of the aggregate rows

COLUMNS = [
    "model",
    "family",
    "mode",
    "P",
    "A90",
    "U90_10",
    "n_instructions",
    "runs",
    "n_conversations",
    "failed",
    "capped",
    "premature_answer_rate",
    "over_clarification_rate",
    "mean_first_answer_turn",
    "mean_reward",
    "simulator",
    "judge",
    "judge_version",
    "version",
]


def find_runs(root: str | Path) -> list[Path]:
    """Run directories at or below ``root`` (any folder holding a conversations file)."""
    r = Path(root)
    if not r.exists():
        raise IcpoError(f"results directory not found: {r}")
    if (r / CONVERSATIONS).exists():
        return [r]
    runs = sorted(p.parent for p in r.rglob(CONVERSATIONS))
    if not runs:
        raise IcpoError(f"no runs ({CONVERSATIONS}) under {r}")
    return runs


#: Where ``icpo-eval run`` writes by default; the project's committed reference runs live in its
#: ``reference/`` folder.
RESULTS_DIR = Path("results")
REFERENCE = "reference"


def user_runs(results: str | Path = RESULTS_DIR) -> list[Path]:
    """The runs under ``results`` other than the committed reference runs (``results/reference/``).

    ``icpo-eval leaderboard`` and ``icpo-eval report`` read these when no folder is named, so
    that a user's own runs never meet the project's: the same model on the same tasks makes the
    same conversation ids, which the leaderboard refuses to count twice. Reference runs are read
    when named (``icpo-eval leaderboard results/reference``).
    """
    root = Path(results)
    reference = root / REFERENCE
    runs = [r for r in find_runs(root) if not r.is_relative_to(reference)]
    if not runs:
        raise IcpoError(
            f"no runs of yours under {root} (the reference runs in {reference} are read only "
            f"when named: icpo-eval leaderboard {reference})"
        )
    return runs


#: Run settings that must agree before two runs' conversations are scored together.
SETTINGS = (
    "temperature",
    "top_p",
    "max_new_tokens",
    "max_turns",
    "simulator",
    "judge",
    "judge_version",
    "version",
)
#: How a conversation written before judges had versions shows in the ``judge_version`` column.
UNRECORDED = "unrecorded"


def _settings(spec: RunSpec | None, conv: Conversation) -> dict[str, object]:
    """What a conversation was produced under: its run's spec, or its own record."""
    own = {
        "simulator": conv.simulator,
        "judge": conv.judge,
        "judge_version": conv.judge_version or UNRECORDED,
        "version": conv.version,
    }
    if spec is None:
        return own
    return {k: getattr(spec, k) for k in SETTINGS if hasattr(spec, k)} | own


#: Columns that are shares, turns or rewards (4 decimals); P, A90 and U90-10 get 2.
RATE_COLUMNS = (
    "premature_answer_rate",
    "over_clarification_rate",
    "mean_first_answer_turn",
    "mean_reward",
)


def collect(roots: Sequence[str | Path]) -> list[Conversation]:
    """Every conversation of every run at or below ``roots``, checked for merging.

    Refused, with a line that says what differs: the same conversation in two runs (it would
    count twice), and one (model, family, mode) whose runs used different settings.
    """
    convs: list[Conversation] = []
    origin: dict[str, Path] = {}
    settings: dict[tuple[str, str, str], dict[tuple, Path]] = defaultdict(dict)
    for root in roots:
        for run_dir in find_runs(root):
            spec, run_convs = load_run(run_dir)
            for c in run_convs:
                if c.conversation_id in origin and origin[c.conversation_id] != run_dir:
                    raise IcpoError(
                        f"conversation {c.conversation_id} is in both {origin[c.conversation_id]}"
                        f" and {run_dir}; pass one of them"
                    )
                origin[c.conversation_id] = run_dir
                setting = tuple(sorted(_settings(spec, c).items()))
                settings[(c.model, c.family, c.mode)].setdefault(setting, run_dir)
                convs.append(c)
    for key, seen in settings.items():
        if len(seen) > 1:
            (a, dir_a), (b, dir_b) = [(dict(t), d) for t, d in list(seen.items())[:2]]
            diff = "; ".join(
                f"{k} {a.get(k)!r} vs {b.get(k)!r}"
                for k in sorted(a.keys() | b.keys())
                if a.get(k) != b.get(k)
            )
            hint = ""
            if a.get("judge") != b.get("judge") or a.get("judge_version") != b.get("judge_version"):
                hint = f"; re-judge one with: icpo-eval rejudge RUN --judge {a.get('judge')}"
            raise IcpoError(
                f"{' '.join(key)}: {dir_a} and {dir_b} were run with different settings "
                f"({diff}){hint}"
            )
    return convs


def table(convs: Sequence[Conversation]) -> pd.DataFrame:
    """The leaderboard of already collected conversations (see the module doc)."""
    groups: dict[tuple[str, str, str], list[Conversation]] = defaultdict(list)
    for c in convs:
        groups[(c.model, c.family, c.mode)].append(c)
        groups[(c.model, ALL, c.mode)].append(c)
    rows = []
    for (model, family, mode), group in sorted(groups.items()):
        row = {"model": model, "family": family, "mode": mode, **summary_row(group)}
        row["simulator"] = _joined(c.simulator for c in group)
        row["judge"] = _joined(c.judge for c in group)
        row["judge_version"] = _joined(c.judge_version or UNRECORDED for c in group)
        row["version"] = _joined(c.version or "" for c in group)
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("P", "A90", "U90_10"):
        df[col] = df[col].astype(float).round(2)
    for col in RATE_COLUMNS:
        df[col] = df[col].astype(float).round(4)
    return df


def build(roots: Sequence[str | Path]) -> pd.DataFrame:
    """Merge every run under ``roots`` into one table: :func:`collect`, then :func:`table`."""
    return table(collect(roots))


def _joined(values: Iterable[object]) -> str:
    return "+".join(sorted({str(v) for v in values}))


def summary_table(convs: list[Conversation]) -> str:
    """A short plain-text table: one line per (family, mode); ``icpo-eval run`` prints it."""
    groups: dict[tuple[str, str], list[Conversation]] = defaultdict(list)
    for c in convs:
        groups[(c.family, c.mode)].append(c)
    lines = [
        f"{'family':<10} {'mode':<8} {'convs':>5} {'failed':>6} {'P':>6} {'A90':>6} "
        f"{'U90-10':>6} {'premature':>9} {'overclar':>8} {'capped':>6}"
    ]
    for (family, mode), group in sorted(groups.items()):
        r = summary_row(group)
        lines.append(
            f"{family:<10} {mode:<8} {r['n_conversations']:>5} {r['failed']:>6} {_f(r['P']):>6} "
            f"{_f(r['A90']):>6} {_f(r['U90_10']):>6} {_pct(r['premature_answer_rate']):>9} "
            f"{_pct(r['over_clarification_rate']):>8} {r['capped']:>6}"
        )
    return "\n".join(lines)


def _f(x: float | int | None) -> str:
    return "-" if x is None else f"{float(x):.1f}"


def _pct(x: float | int | None) -> str:
    return "-" if x is None else f"{100 * float(x):.0f}%"
