"""Reward data: every judged assistant turn of a run, as training rows.

One row per assistant turn: the conversation up to that turn as chat messages (system prompt
included, exactly what the model saw), whether it was fully specified, the family, the
instruction (the evaluator's reference payload: everything ``Family.grade`` needs), and what the
model answered with its category, score and ICPO reward. A trainer only needs the prompt, the
flag and the instruction (it samples its own completions); the logged reply, category and
reward are there for offline methods and for reading.

``--augment`` adds, per instruction of the run, the ICPO paper's single-turn prompts: the fully
specified prompt and up to two underspecified variants q* (:meth:`Family.underspecified_variants`).
These rows have no response.

Formats (all three read back by :func:`load_export` into the same rows):

- ``jsonl``: ``rows.jsonl``, one row per line;
- ``hf``: a ``datasets`` dataset written with ``save_to_disk``;
- ``verl``: ``train.parquet`` with verl's columns (``data_source``, ``prompt``, ``ability``,
  ``reward_model`` = ``{"style": "rule", "ground_truth": <instruction JSON>}``, ``extra_info``
  holding the rest), for :mod:`icpo_eval.verl_reward` on a verl/Ray cluster. verl trains on
  every row it is given, so this export holds the training prompts: the rows the TRL trainer
  would pick (:func:`icpo_eval.selection.select_rows`: deduped, sources, balance, seed, limits),
  with the selection keys of a recipe (``--recipe``; default: a recipe's defaults), in the
  trainer's order. ``selection.json`` beside the parquet says with which keys, from how many
  rows, and which row ids were picked.

  Every verl row also carries ``extra_info["interaction_kwargs"]``, what verl's multi-turn
  rollout hands :class:`icpo_eval.verl_interaction.IcpoInteraction`: ``name`` (``icpo``),
  ``instruction`` (the instruction JSON) and ``revealed`` (the shard ids the row's prompt has
  given: every shard for a ``full`` row, all but the removed ones for a q* row, for a turn of the
  run those whose text its user messages hold, shard 1 always), so that a multi-turn rollout
  can go on from any row. ``multi_turn=True`` (:func:`start_rows`) exports the openings of
  sharded conversations instead: one row per instruction of the run, the system prompt and
  shard 1 alone (the simulator's first turn), ``agent_name`` ``tool_agent`` (verl's loop with
  interactions), shuffled with the selection's seed and cut to its ``max_prompts`` (its other
  keys do not apply: nearly every opening is underspecified, and there is one per task).

``jsonl`` and ``hf`` keep every row: ``icpo-eval train`` selects when it loads them.

Every directory also gets ``export.json``: the format, the run it came from and row counts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families import get_family
from icpo_eval.records import Conversation, Instruction, derive_seed
from icpo_eval.selection import Selection, select_rows
from icpo_eval.store import load_run
from icpo_eval.tasksets import load_tasks

FORMATS = ("jsonl", "hf", "verl")
META = "export.json"
JSONL_FILE = "rows.jsonl"
VERL_FILE = "train.parquet"
SELECTION_FILE = "selection.json"

#: Columns of a row, in order. ``instruction`` is a JSON string so that rows of different
#: families (whose fields differ) fit one Arrow schema.
COLUMNS = (
    "row_id",
    "source",  # "run": a turn of the run; "augment": a single-turn prompt added by --augment
    "conversation_id",
    "task_id",
    "family",
    "mode",  # run mode; for augment rows "full" or "qstar"
    "model",
    "run_index",
    "turn_index",
    "prompt",  # [{"role", "content"}, ...] up to (not including) the assistant turn
    "fully_specified",
    "removed_shards",  # augment q* rows: the shard ids left out
    "instruction",
    "response",
    "category",
    "score",
    "reward",
    "truncated",
    "judge",  # which judge decided the category, and its version (run rows only)
    "judge_version",
)


def _system(inst: Instruction) -> list[dict[str, str]]:
    text = get_family(inst.task).system_prompt(inst)
    return [{"role": "system", "content": text}] if text else []


def _row(**values: Any) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row["removed_shards"] = []
    row.update(values)
    return row


def turn_rows(conv: Conversation, inst: Instruction) -> list[dict[str, Any]]:
    """One row per assistant turn of a conversation."""
    rows = []
    messages = _system(inst)
    instruction = json.dumps(inst.to_dict(), ensure_ascii=False, sort_keys=True)
    for turn in conv.turns:
        if turn.role == "assistant":
            rows.append(
                _row(
                    row_id=f"{conv.conversation_id}:t{turn.index}",
                    source="run",
                    conversation_id=conv.conversation_id,
                    task_id=conv.task_id,
                    family=conv.family,
                    mode=conv.mode,
                    model=conv.model,
                    run_index=conv.run_index,
                    turn_index=turn.index,
                    prompt=[dict(m) for m in messages],
                    fully_specified=bool(turn.fully_specified),
                    instruction=instruction,
                    response=turn.content,
                    category=turn.category,
                    score=turn.score,
                    reward=turn.reward,
                    truncated=turn.truncated,
                    judge=turn.judge,
                    judge_version=turn.judge_version,
                )
            )
        messages.append({"role": turn.role, "content": turn.content})
    return rows


def augment_rows(inst: Instruction, seed: int) -> list[dict[str, Any]]:
    """The fully specified prompt and up to two underspecified variants (q*) of one instruction."""
    family = get_family(inst.task)
    system = _system(inst)
    instruction = json.dumps(inst.to_dict(), ensure_ascii=False, sort_keys=True)
    common = {"source": "augment", "task_id": inst.task_id, "family": inst.task}
    rows = [
        _row(
            row_id=f"{inst.task_id}:full",
            mode="full",
            prompt=system + [{"role": "user", "content": family.full_prompt(inst)}],
            fully_specified=True,
            instruction=instruction,
            **common,
        )
    ]
    rng = random.Random(derive_seed(seed, inst.task_id, "qstar"))
    for k, (text, removed) in enumerate(family.underspecified_variants(inst, rng)):
        rows.append(
            _row(
                row_id=f"{inst.task_id}:qstar{k}",
                mode="qstar",
                prompt=system + [{"role": "user", "content": text}],
                fully_specified=False,
                removed_shards=list(removed),
                instruction=instruction,
                **common,
            )
        )
    return rows


def build_rows(
    run_dir: str | Path, augment: bool = False, tasks: str | None = None
) -> list[dict[str, Any]]:
    """All rows of a run. ``tasks`` overrides the run's ``--tasks`` to find its instructions."""
    spec, convs = load_run(run_dir)
    spec_tasks = tasks or (spec.tasks if spec else None)
    if spec_tasks is None:
        raise IcpoError(f"{run_dir}: no run.json to say which tasks it ran; pass --tasks")
    by_id = {i.task_id: i for i in load_tasks(spec_tasks)}
    missing = sorted({c.task_id for c in convs} - set(by_id))
    if missing:
        raise IcpoError(
            f"{run_dir}: {len(missing)} task id(s) not found in --tasks {spec_tasks} "
            f"(first: {missing[0]}); pass the task set the run used with --tasks"
        )
    rows: list[dict[str, Any]] = []
    for conv in sorted(convs, key=lambda c: c.conversation_id):
        rows += turn_rows(conv, by_id[conv.task_id])
    if augment:
        seed = spec.seed if spec else 0
        for task_id in sorted({c.task_id for c in convs}):
            rows += augment_rows(by_id[task_id], seed)
    return rows


# --------------------------------------------------------------------------------------------
# Writing and reading the three formats
# --------------------------------------------------------------------------------------------


#: The interaction's name in verl's interaction config (icpo_eval.verl_interaction).
INTERACTION_NAME = "icpo"
#: verl's agent loop that runs interactions (``verl/experimental/agent_loop/tool_agent_loop.py``).
MULTI_TURN_AGENT = "tool_agent"
START_MODE = "sharded"


def prompt_revealed(row: dict[str, Any], inst: Instruction) -> list[int]:
    """The shard ids a row's prompt has given (see the module doc)."""
    all_ids = [s.shard_id for s in inst.shards]
    if row["source"] == "augment":
        removed = {int(x) for x in row.get("removed_shards") or []}
        return [i for i in all_ids if i not in removed]
    said = "\n".join(str(m.get("content") or "") for m in row["prompt"] if m.get("role") == "user")
    first = inst.shards[0].shard_id
    return [s.shard_id for s in inst.shards if s.shard_id == first or s.shard in said]


def interaction_kwargs(row: dict[str, Any]) -> dict[str, Any]:
    """``extra_info["interaction_kwargs"]`` of a verl row (flat: one parquet struct for all)."""
    inst = Instruction.from_dict(json.loads(row["instruction"]), where=f"row {row['row_id']}")
    return {
        "name": INTERACTION_NAME,
        "instruction": row["instruction"],
        "revealed": prompt_revealed(row, inst),
    }


def _to_verl(row: dict[str, Any], index: int, multi_turn: bool = False) -> dict[str, Any]:
    extra = {k: row[k] for k in COLUMNS if k not in ("prompt", "family", "instruction")}
    extra["index"] = index
    # verl hands a reward function only (data_source, solution_str, ground_truth, extra_info):
    # the judge needs the conversation so far, so it travels in extra_info too.
    extra["messages"] = json.dumps(row["prompt"], ensure_ascii=False)
    # verl's multi-turn rollout starts the interaction with these (and passes them every turn).
    extra["interaction_kwargs"] = interaction_kwargs(row)
    out = {
        "data_source": f"icpo_eval/{row['family']}",
        "prompt": row["prompt"],
        "ability": row["family"],
        "reward_model": {"style": "rule", "ground_truth": row["instruction"]},
        "extra_info": extra,
    }
    if multi_turn:
        out["agent_name"] = MULTI_TURN_AGENT
    return out


def start_rows(
    rows: list[dict[str, Any]], selection: Selection | None = None
) -> list[dict[str, Any]]:
    """The openings of sharded conversations: one row per instruction in ``rows`` (the system
    prompt and shard 1 alone, as the simulator opens), shuffled with the selection's seed and
    cut to its ``max_prompts``."""
    sel = selection or Selection()
    by_task: dict[str, str] = {}
    for r in rows:
        by_task.setdefault(r["task_id"], r["instruction"])
    out = []
    for task_id in sorted(by_task):
        inst = Instruction.from_dict(json.loads(by_task[task_id]), where=f"task {task_id}")
        first = inst.shards[0]
        out.append(
            _row(
                row_id=f"{task_id}:start",
                source="run",
                task_id=task_id,
                family=inst.task,
                mode=START_MODE,
                turn_index=0,
                prompt=_system(inst) + [{"role": "user", "content": first.shard}],
                fully_specified=inst.required_ids <= {first.shard_id},
                instruction=by_task[task_id],
            )
        )
    random.Random(sel.seed).shuffle(out)
    if sel.max_prompts:
        out = out[: sel.max_prompts]
    if not out:
        raise IcpoError("nothing to export: the run has no instructions")
    return out


def _from_verl(rec: dict[str, Any]) -> dict[str, Any]:
    extra = dict(rec["extra_info"])
    row = _row(
        prompt=[dict(m) for m in rec["prompt"]],
        family=rec["ability"],
        instruction=rec["reward_model"]["ground_truth"],
    )
    for k in COLUMNS:
        if k in extra:
            row[k] = extra[k]
    row["removed_shards"] = [int(x) for x in row["removed_shards"]]
    return row


def write_export(
    rows: list[dict[str, Any]],
    out: str | Path,
    fmt: str,
    meta: dict[str, Any] | None = None,
    multi_turn: bool = False,
) -> Path:
    if fmt not in FORMATS:
        raise IcpoError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    if not rows:
        raise IcpoError("nothing to export: the run has no assistant turns")
    d = Path(out)
    if d.exists() and any(d.iterdir()):
        raise IcpoError(f"{d} exists and is not empty; choose another -o")
    d.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with open(d / JSONL_FILE, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "hf":
        import datasets

        datasets.disable_progress_bars()
        datasets.Dataset.from_list(rows).save_to_disk(str(d))
    else:
        import pandas as pd

        pd.DataFrame([_to_verl(r, i, multi_turn) for i, r in enumerate(rows)]).to_parquet(
            d / VERL_FILE, index=False
        )
    counts = _counts(rows)
    (d / META).write_text(json.dumps({"format": fmt, **counts, **(meta or {})}, indent=2) + "\n")
    return d


def _counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    rows = list(rows)
    return {
        "rows": len(rows),
        "fully_specified": sum(1 for r in rows if r["fully_specified"]),
        "underspecified": sum(1 for r in rows if not r["fully_specified"]),
        "augment_rows": sum(1 for r in rows if r["source"] == "augment"),
    }


def detect_format(d: Path) -> str:
    if (d / META).exists():
        try:
            fmt = json.loads((d / META).read_text())["format"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise IcpoError(f"{d / META}: unreadable export metadata") from None
        if fmt in FORMATS:
            return fmt
    if (d / JSONL_FILE).exists():
        return "jsonl"
    if (d / VERL_FILE).exists():
        return "verl"
    if (d / "dataset_info.json").exists():
        return "hf"
    raise IcpoError(f"{d}: not an icpo-eval export (no {META}, {JSONL_FILE} or dataset)")


def load_export(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an export directory in any of the three formats."""
    d = Path(path)
    if not d.is_dir():
        raise IcpoError(f"export directory not found: {d}")
    fmt = detect_format(d)
    if fmt == "jsonl":
        rows = []
        with open(d / JSONL_FILE, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise IcpoError(
                            f"{d / JSONL_FILE}:{lineno}: malformed JSON ({e.msg})"
                        ) from None
        return rows
    if fmt == "hf":
        import datasets

        return [dict(r) for r in datasets.load_from_disk(str(d))]
    import pandas as pd

    records = pd.read_parquet(d / VERL_FILE).to_dict(orient="records")
    return [_from_verl(_plain(r)) for r in records]


def _plain(value: Any) -> Any:
    """numpy arrays and scalars from parquet → Python lists and scalars (NaN → None)."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def verl_rows(
    rows: list[dict[str, Any]], selection: Selection | None = None
) -> list[dict[str, Any]]:
    """The rows of a verl export: the training prompts the TRL trainer would pick from ``rows``
    with the same selection keys (default: a recipe's defaults)."""
    sel = selection or Selection()
    sel.check()
    return select_rows(rows, sel, sel.token_counter())


def export_run(
    run_dir: str | Path,
    out: str | Path,
    fmt: str,
    augment: bool = False,
    tasks: str | None = None,
    selection: Selection | None = None,
    multi_turn: bool = False,
) -> tuple[Path, dict[str, int]]:
    """Export a run. A ``verl`` export holds the selected training prompts (``selection``,
    default: a recipe's defaults) and records the selection in ``selection.json``;
    ``multi_turn`` (verl only) the openings of sharded conversations (:func:`start_rows`)."""
    if fmt not in FORMATS:
        raise IcpoError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    if multi_turn and fmt != "verl":
        raise IcpoError("multi-turn rows (conversation openings) are for --format verl only")
    if selection is not None and fmt != "verl":
        raise IcpoError(
            f"a recipe's selection applies to --format verl only; a {fmt} export keeps every "
            "row and icpo-eval train selects when it loads it"
        )
    rows = build_rows(run_dir, augment=augment, tasks=tasks)
    meta: dict[str, Any] = {"run": str(run_dir), "augment": augment}
    if fmt != "verl":
        return write_export(rows, out, fmt, meta=meta), _counts(rows)
    sel = selection or Selection()
    picked = start_rows(rows, sel) if multi_turn else verl_rows(rows, sel)
    meta.update(selection=sel.to_dict(), selected_from=len(rows), multi_turn=multi_turn)
    d = write_export(picked, out, fmt, meta=meta, multi_turn=multi_turn)
    record = {
        "selection": sel.to_dict(),
        "multi_turn": multi_turn,
        "rows_in": len(rows),
        "rows_selected": len(picked),
        **{k: v for k, v in _counts(picked).items() if k != "rows"},
        "row_ids": [r["row_id"] for r in picked],
    }
    (d / SELECTION_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return d, _counts(picked)
