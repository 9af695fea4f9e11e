"""Resolve a ``--tasks`` value into instructions.

A value is a comma-separated list of sources:

- a family name (``math``): the committed set ``tasks/<family>.jsonl``;
- ``lic:FILE``: a Lost-in-Conversation JSON array (see :func:`load_lic`);
- a path to a ``.jsonl`` file of instructions in the LiC layout, one per line;
- ``hf:NAME[:SPLIT]``: LiC-format records through Hugging Face ``datasets`` (see
  :func:`load_hf`): a hub id (offline only when cached), a folder written by ``save_to_disk``,
  or a local JSON/JSONL/Parquet file.

``limit`` keeps the first K instructions of each source.
"""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families import family_names, get_family
from icpo_eval.paths import TASKS_DIR
from icpo_eval.records import JSON_ERRORS, Instruction, check_json_shape, loads_checked

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


def read_jsonl(path: str | Path) -> list[Instruction]:
    p = Path(path)
    _check_file(p, "task file")
    out = []
    with open(p, encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{p}:{lineno}"
                out.append(_instruction(loads_checked(line, where), where))
        except UnicodeDecodeError:
            raise IcpoError(f"{p}: not UTF-8 text") from None
    return out


def load_lic(path: str | Path) -> list[Instruction]:
    """Lost-in-Conversation data (Laban et al. 2025): one JSON array of records.

    ``{"task_id", "task", "shards": [{"shard_id", "shard"}], ...}``; math records also carry
    ``question`` and a GSM8K-style ``answer`` whose last line is ``#### N``. Every LiC shard
    counts as required (there is no ``required_shards`` field), which :class:`Instruction`
    expresses as ``required_shards=None``.
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
    out = []
    for i, rec in enumerate(data):
        inst = _instruction(rec, f"{p} record {i}")
        inst.required_shards = None
        out.append(inst)
    return out


def write_jsonl(instructions: list[Instruction], path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        for inst in instructions:
            f.write(json.dumps(inst.to_dict(), ensure_ascii=False) + "\n")


#: Record fields that LiC data on the Hugging Face hub (and any dataset saved from ours) keeps as
#: JSON strings, because Arrow columns need one type across records of every family.
_JSON_FIELDS = (
    "shards",
    "required_shards",
    "function",
    "reference_answer",
    "fully_specified_question",
)
_log = logging.getLogger(__name__)


def _hf_record(row: dict[str, Any]) -> dict[str, Any]:
    """A dataset row as an instruction dict: JSON-string fields decoded, and the ``None``
    values that Arrow gives to columns of other families' records dropped."""
    rec = {k: v for k, v in row.items() if v is not None}
    for key in _JSON_FIELDS:
        value = rec.get(key)
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            try:
                rec[key] = json.loads(value)
            except JSON_ERRORS:
                pass  # Instruction.from_dict names the bad field
    return rec


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


def load_hf(spec: str) -> list[Instruction]:
    """LiC-format records from a Hugging Face dataset.

    ``spec`` is ``NAME`` or ``NAME:SPLIT`` (default split ``train``, or the only one). NAME is a
    folder written by ``Dataset.save_to_disk``, a local JSON/JSONL/Parquet file, or a hub id
    (downloaded when online; offline it loads only from the ``datasets`` cache). Records of
    families icpo-eval does not have (LiC's ``summary``, ``data2text``) are skipped with a
    warning, so that LiC's full release can be named directly. As for LiC files, every shard
    counts as required unless a record carries ``required_shards``.
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
    known = set(family_names())
    out: list[Instruction] = []
    skipped: dict[str, int] = {}
    for i, row in enumerate(ds):
        rec = _hf_record(dict(row))
        task = str(rec.get("task", ""))
        if task and task not in known:
            skipped[task] = skipped.get(task, 0) + 1
            continue
        where = f"hf:{spec} record {i}"
        check_json_shape(rec, where)
        out.append(_instruction(rec, where))
    if skipped:
        what = ", ".join(f"{n} {t}" for t, n in sorted(skipped.items()))
        _log.warning("hf:%s: skipped records of families icpo-eval does not have (%s)", spec, what)
    return out


def load_source(source: str) -> list[Instruction]:
    source = source.strip()
    if source.startswith("hf:"):
        return load_hf(source[3:].strip())
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
