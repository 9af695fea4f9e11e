"""Leaderboard CSV: one row per (model, family, mode) over one or many run directories."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from icpo_eval.errors import IcpoError
from icpo_eval.metrics import summary_row
from icpo_eval.records import Conversation
from icpo_eval.store import CONVERSATIONS, load_run

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
    "premature_answer_rate",
    "over_clarification_rate",
    "mean_first_answer_turn",
    "mean_reward",
    "simulator",
    "judge",
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


def build(roots: list[str | Path]) -> pd.DataFrame:
    convs: list[Conversation] = []
    for root in roots:
        for run_dir in find_runs(root):
            convs.extend(load_run(run_dir)[1])
    groups: dict[tuple[str, str, str], list[Conversation]] = defaultdict(list)
    for c in convs:
        groups[(c.model, c.family, c.mode)].append(c)
    rows = []
    for (model, family, mode), group in sorted(groups.items()):
        row = {"model": model, "family": family, "mode": mode, **summary_row(group)}
        row["simulator"] = _joined(c.simulator for c in group)
        row["judge"] = _joined(c.judge for c in group)
        row["version"] = _joined(c.version or "" for c in group)
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("P", "A90", "U90_10"):
        df[col] = df[col].astype(float).round(2)
    for col in (
        "premature_answer_rate",
        "over_clarification_rate",
        "mean_first_answer_turn",
        "mean_reward",
    ):
        df[col] = df[col].astype(float).round(4)
    return df


def _joined(values: Iterable[object]) -> str:
    return "+".join(sorted({str(v) for v in values}))
