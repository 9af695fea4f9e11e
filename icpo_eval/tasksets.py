"""Resolve a ``--tasks`` value into instructions.

A value is a comma-separated list of sources:

- a family name (``math``): the committed set ``tasks/<family>.jsonl``;
- ``lic:FILE``: a Lost-in-Conversation JSON array (see :func:`load_lic`);
- a path to a ``.jsonl`` file of instructions in the LiC layout, one per line;
- ``hf:NAME[:SPLIT]``: LiC-format records through Hugging Face ``datasets`` (see
  :func:`load_hf`): a hub id (offline only when cached), a folder written by ``save_to_disk``,
  or a local JSON/JSONL/Parquet file.

``limit`` keeps the first K instructions of each source.

Every door reads the same LiC-format records through one function (:func:`lic_records`), with
the same checks and messages:

- fields that arrive as strings holding JSON or a Python literal (``metadata``, ``raw_table``,
  ``reference_answer``, ``documents`` ...: :data:`ENCODED_FIELDS`) are decoded
  (:func:`~icpo_eval.records.decode_field`: ``json``, then :func:`ast.literal_eval`, never
  ``eval``); ``None`` values (Arrow's filler for other tasks' columns) are dropped;
- records of a task icpo-eval does not have are skipped, counted per task in one warning line
  (``strict=True``, ``--strict``: refused instead);
- shards whose text is empty are dropped, counted in one warning line (a record left with no
  shard is skipped);
- a ``task_id`` that occurs again (another sharding of one problem) becomes ``ID#2``,
  ``ID#3`` ..., in file order, so conversation ids stay stable across runs; one warning line
  counts them;
- every shard counts as required unless the record says otherwise (``required_shards``).
"""

from __future__ import annotations

import json
import stat
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families import family_names, get_family
from icpo_eval.paths import TASKS_DIR
from icpo_eval.records import Instruction, check_json_shape, decode_field, loads_checked

#: The largest task file read (a FIFO or a device is refused whatever its size).
MAX_TASK_FILE_BYTES = 2 * 2**30


def _instruction(rec: Any, where: str) -> Instruction:
    """:meth:`Instruction.from_dict`, then the family's own data checked where it is costly
    to find wrong later (a code record's test cases decoded under their caps); any failure is
    one IcpoError naming ``where``."""
    try:
        inst = Instruction.from_dict(rec, where=where)
    except IcpoError:
        raise
    except Exception as e:  # a field of a type from_dict does not expect
        raise IcpoError(f"{where}: not an instruction ({type(e).__name__}: {e})"[:300]) from None
    if inst.task == "code" and (
        "public_test_cases" in inst.fields or "private_test_cases" in inst.fields
    ):
        from icpo_eval.families.code import lic_test_cases

        try:
            lic_test_cases(inst)
        except IcpoError as e:
            raise IcpoError(f"{where}: {e}") from None
    return inst


def _check_file(p: Path, what: str) -> None:
    """A regular file no larger than :data:`MAX_TASK_FILE_BYTES` (a FIFO would block)."""
    try:
        st = p.stat()
    except OSError:
        raise IcpoError(f"{what} not found: {p}") from None
    if not stat.S_ISREG(st.st_mode):
        raise IcpoError(f"{what} is not a regular file: {p}")
    if st.st_size > MAX_TASK_FILE_BYTES:
        raise IcpoError(f"{p}: over {MAX_TASK_FILE_BYTES // 2**30} GiB; refused")


def _jsonl_rows(p: Path) -> Iterator[tuple[Any, str]]:
    with open(p, encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    where = f"{p}:{lineno}"
                    yield loads_checked(line, where), where
        except UnicodeDecodeError:
            raise IcpoError(f"{p}: not UTF-8 text") from None


def read_jsonl(path: str | Path, strict: bool = False) -> list[Instruction]:
    """Instructions, one JSON object a line (``tasks/*.jsonl``, or LiC records so written)."""
    p = Path(path)
    _check_file(p, "task file")
    return lic_records(_jsonl_rows(p), str(p), strict)


def load_lic(path: str | Path, strict: bool = False) -> list[Instruction]:
    """Lost-in-Conversation data (Laban et al. 2025): one JSON array of records, as the
    benchmark's release has it (all its tasks mixed in one file).

    ``{"task_id", "task", "shards": [{"shard_id", "shard"}], ...}``; math records also carry
    ``question`` and a GSM8K-style ``answer`` whose last line is ``#### N``. Read by
    :func:`lic_records` (see the module doc).
    """
    p = Path(path)
    _check_file(p, "LiC file")
    try:
        data = loads_checked(p.read_text(encoding="utf-8"), str(p))
    except UnicodeDecodeError:
        raise IcpoError(f"{p}: not UTF-8 text") from None
    if isinstance(data, dict):  # tolerate {"instructions": [...]} or a single record
        data = data.get("instructions", [data])
    if not isinstance(data, list):
        raise IcpoError(f"{p}: expected a JSON array of LiC records")
    return lic_records(((rec, f"{p} record {i}") for i, rec in enumerate(data)), str(p), strict)


#: Record fields that may arrive as strings holding JSON or a Python literal: LiC's release
#: writes some so, and Arrow columns (the hub, any dataset saved from ours) need one type across
#: the records of every task. ``public_test_cases``/``private_test_cases`` are not here: the
#: code family decodes them itself, under its own caps.
ENCODED_FIELDS = (
    "shards",
    "required_shards",
    "function",
    "reference_answer",
    "fully_specified_question",
    "metadata",
    "raw_table",
    "references",
    "schema_tables",
    "documents",
    "insights",
    "insightid2ref_citations",
)


def _decoded_record(rec: Any, where: str) -> Any:
    """A record with ``None`` values dropped and :data:`ENCODED_FIELDS` decoded."""
    if not isinstance(rec, dict):
        return rec
    out = {k: v for k, v in rec.items() if v is not None}
    for key in ENCODED_FIELDS:
        if key in out:
            out[key] = decode_field(out[key], f"{where}: {key}")
    return out


def _without_empty_shards(rec: Any) -> tuple[Any, int]:
    """The record without shards whose text is empty, and how many were dropped."""
    shards = rec.get("shards") if isinstance(rec, dict) else None
    if not isinstance(shards, list):
        return rec, 0
    kept = [
        s
        for s in shards
        if not (isinstance(s, dict) and isinstance(s.get("shard"), str) and not s["shard"].strip())
    ]
    if len(kept) == len(shards):
        return rec, 0
    return {**rec, "shards": kept}, len(shards) - len(kept)


def lic_records(
    rows: Iterable[tuple[Any, str]], source: str, strict: bool = False
) -> list[Instruction]:
    """Instructions from LiC-format records, each with where it was read (the one loader of
    every door; its rules are in the module doc). Problems with one record raise one
    :class:`IcpoError` naming it; what is skipped or renamed is said in one warning line each."""
    known = set(family_names())
    out: list[Instruction] = []
    unknown: Counter[str] = Counter()
    empty_shards = empty_records = 0
    for rec, where in rows:
        rec = _decoded_record(rec, where)
        task = rec.get("task") if isinstance(rec, dict) else None
        if isinstance(task, str) and task and task not in known:
            if strict:
                raise IcpoError(
                    f"{where}: task {task!r} is not one icpo-eval has "
                    f"(known: {', '.join(sorted(known))}); drop --strict to skip such records"
                )
            unknown[task] += 1
            continue
        if isinstance(task, str) and task:
            rec = get_family(task).normalise_record(rec, where)
        rec, dropped = _without_empty_shards(rec)
        empty_shards += dropped
        if dropped and not rec.get("shards"):
            empty_records += 1
            continue
        check_json_shape(rec, where)
        out.append(_instruction(rec, where))
    if unknown:
        what = ", ".join(f"{n} {t}" for t, n in sorted(unknown.items()))
        if not out:
            raise IcpoError(
                f"{source}: no record of a task icpo-eval has ({what}; known: "
                f"{', '.join(sorted(known))})"
            )
        _warn(f"{source}: skipped records of tasks icpo-eval does not have ({what})")
    if empty_shards:
        extra = f"; {empty_records} records had no other shard and were skipped" * bool(
            empty_records
        )
        _warn(f"{source}: dropped {empty_shards} shards whose text is empty{extra}")
    return out


def _warn(line: str) -> None:
    """One warning line on stderr (``icpo-eval: warning: ...``)."""
    print(f"icpo-eval: warning: {line}", file=sys.stderr)


def write_jsonl(instructions: list[Instruction], path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        for inst in instructions:
            f.write(json.dumps(inst.to_dict(), ensure_ascii=False) + "\n")


def _split_hf_spec(spec: str) -> tuple[str, str | None]:
    """``NAME[:SPLIT]``; a colon that belongs to an existing path is not a split separator."""
    if Path(spec).exists() or ":" not in spec:
        return spec, None
    name, split = spec.rsplit(":", 1)
    if not name or not split or "/" in split:
        raise IcpoError(f"hf:{spec}: expected hf:NAME or hf:NAME:SPLIT")
    return name, split


def _open_hf(name: str, split: str | None) -> Any:
    """The dataset (one split) behind ``name``: saved folder, local file, or hub id."""
    import datasets

    path = Path(name).expanduser()
    if path.is_dir() and (
        (path / "dataset_info.json").is_file()
        or (path / "state.json").is_file()
        or (path / "dataset_dict.json").is_file()
    ):
        ds = datasets.load_from_disk(str(path))
    elif path.is_file():
        kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}.get(
            path.suffix.lower()
        )
        if kind is None:
            raise IcpoError(f"hf:{name}: unsupported file type {path.suffix or '(none)'}")
        ds = datasets.load_dataset(kind, data_files=str(path))
    else:
        ds = (
            datasets.load_dataset(name)
            if split is None
            else datasets.load_dataset(name, split=split)
        )
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in ds or len(ds) != 1 else next(iter(ds))
        if split not in ds:
            raise IcpoError(f"hf:{name}: no split {split!r} (splits: {', '.join(ds)})")
        ds = ds[split]
    return ds


def load_hf(spec: str, strict: bool = False) -> list[Instruction]:
    """LiC-format records from a Hugging Face dataset.

    ``spec`` is ``NAME`` or ``NAME:SPLIT`` (default split ``train``, or the only one). NAME is a
    folder written by ``Dataset.save_to_disk``, a local JSON/JSONL/Parquet file, or a hub id
    (downloaded when online; offline it loads only from the ``datasets`` cache). Read by
    :func:`lic_records`, as every other door (see the module doc).
    """
    name, split = _split_hf_spec(spec)
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise IcpoError("hf: task sources need the 'datasets' package") from None
    try:
        ds = _open_hf(name, split)
    except IcpoError:
        raise
    except Exception as e:  # datasets raises many types: offline, not found, bad files
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise IcpoError(f"hf:{spec}: cannot load dataset ({type(e).__name__}: {first})") from None
    return lic_records(
        ((dict(row), f"hf:{spec} record {i}") for i, row in enumerate(ds)), f"hf:{spec}", strict
    )


def load_source(source: str, strict: bool = False) -> list[Instruction]:
    source = source.strip()
    if source.startswith("hf:"):
        return load_hf(source[3:].strip(), strict)
    if source.startswith("lic:"):
        return load_lic(source[4:], strict)
    if source.endswith((".jsonl", ".json")) or "/" in source:
        if source.endswith(".json"):
            return load_lic(source, strict)
        return read_jsonl(source, strict)
    if source not in family_names():
        raise IcpoError(f"unknown task family {source!r} (known: {', '.join(family_names())})")
    path = TASKS_DIR / f"{source}.jsonl"
    if not path.exists():
        raise IcpoError(
            f"no committed task set {path}; make one with "
            f"`icpo-eval tasks generate {source} --n 200 --seed 0 -o {path}`"
        )
    return read_jsonl(path, strict)


def load_tasks(spec: str, limit: int | None = None, strict: bool = False) -> list[Instruction]:
    """The instructions of a ``--tasks`` value, in order; ``limit`` keeps the first K of each
    source. A task id met again (in one source or across sources) becomes ``ID#2``, ``ID#3``
    ..., said in one warning line."""
    out: list[Instruction] = []
    seen: Counter[str] = Counter()
    renamed: list[str] = []
    for source in [s for s in spec.split(",") if s.strip()]:
        insts = load_source(source, strict)
        if limit is not None:
            insts = insts[:limit]
        for inst in insts:
            get_family(inst.task)  # unknown family -> one clear error, before any work
            seen[inst.task_id] += 1
            if seen[inst.task_id] > 1:
                new_id = f"{inst.task_id}#{seen[inst.task_id]}"
                while new_id in seen:  # an id that already looks like a renamed one
                    seen[inst.task_id] += 1
                    new_id = f"{inst.task_id}#{seen[inst.task_id]}"
                renamed.append(inst.task_id)
                inst.task_id = new_id
                seen[new_id] += 1
            out.append(inst)
    if renamed:
        _warn(
            f"--tasks {spec}: {len(renamed)} records repeat a task_id ({len(set(renamed))} ids, "
            f"first {renamed[0]!r}); they are numbered ID#2, ID#3 ... in file order"
        )
    if not out:
        raise IcpoError(f"--tasks {spec}: no instructions")
    return out
