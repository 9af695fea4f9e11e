"""Resolve a ``--tasks`` value into instructions.

A value is a comma-separated list of sources:

- a family name (``math``): the committed set ``tasks/<family>.jsonl``;
- ``lic:FILE``: a Lost-in-Conversation JSON array (see :mod:`icpo_eval.families.lic`);
- a path to a ``.jsonl`` file of instructions in the LiC layout, one per line.

``limit`` keeps the first K instructions of each source.
"""

from __future__ import annotations

import json
from pathlib import Path

from icpo_eval.errors import IcpoError
from icpo_eval.families import family_names, get_family
from icpo_eval.families.lic import load_lic
from icpo_eval.paths import TASKS_DIR
from icpo_eval.records import Instruction


def read_jsonl(path: str | Path) -> list[Instruction]:
    p = Path(path)
    if not p.is_file():
        raise IcpoError(f"task file not found: {p}")
    out = []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise IcpoError(f"{p}:{lineno}: malformed JSON ({e.msg})") from None
            out.append(Instruction.from_dict(rec, where=f"{p}:{lineno}"))
    return out


def write_jsonl(instructions: list[Instruction], path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        for inst in instructions:
            f.write(json.dumps(inst.to_dict(), ensure_ascii=False) + "\n")


def load_source(source: str) -> list[Instruction]:
    source = source.strip()
    if source.startswith("lic:"):
        return load_lic(source[4:])
    if source.endswith((".jsonl", ".json")) or "/" in source:
        if source.endswith(".json"):
            return load_lic(source)
        return read_jsonl(source)
    if source not in family_names():
        raise IcpoError(f"unknown task family {source!r} (known: {', '.join(family_names())})")
    path = TASKS_DIR / f"{source}.jsonl"
    if not path.exists():
        raise IcpoError(
            f"no committed task set {path}; make one with "
            f"`icpo-eval tasks generate {source} --n 200 --seed 0 -o {path}`"
        )
    return read_jsonl(path)


def load_tasks(spec: str, limit: int | None = None) -> list[Instruction]:
    out: list[Instruction] = []
    seen: set[str] = set()
    for source in [s for s in spec.split(",") if s.strip()]:
        insts = load_source(source)
        if limit is not None:
            insts = insts[:limit]
        for inst in insts:
            get_family(inst.task)  # unknown family -> one clear error, before any work
            if inst.task_id in seen:
                raise IcpoError(f"duplicate task_id {inst.task_id!r} in --tasks {spec}")
            seen.add(inst.task_id)
            out.append(inst)
    if not out:
        raise IcpoError(f"--tasks {spec}: no instructions")
    return out
