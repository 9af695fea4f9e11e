"""Load Lost-in-Conversation data (Laban et al. 2025).

LiC ships its sharded instructions as one JSON array of records:
``{"task_id", "task", "shards": [{"shard_id", "shard"}], ...}``; math records also carry
``question`` and a GSM8K-style ``answer`` whose last line is ``#### N``. Every LiC shard counts
as required (there is no ``required_shards`` field), which :class:`Instruction` expresses as
``required_shards=None``.
"""

from __future__ import annotations

import json
from pathlib import Path

from icpo_eval.errors import IcpoError
from icpo_eval.records import Instruction


def load_lic(path: str | Path) -> list[Instruction]:
    p = Path(path)
    if not p.is_file():
        raise IcpoError(f"LiC file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise IcpoError(f"{p}: malformed JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise IcpoError(f"{p}: not UTF-8 text") from None
    if isinstance(data, dict):  # tolerate {"instructions": [...]} or a single record
        data = data.get("instructions", [data])
    if not isinstance(data, list):
        raise IcpoError(f"{p}: expected a JSON array of LiC records")
    out = []
    for i, rec in enumerate(data):
        inst = Instruction.from_dict(rec, where=f"{p} record {i}")
        inst.required_shards = None
        out.append(inst)
    return out
