"""One leaderboard from result folders evaluated in separate runs of the same protocol.

    .venv/bin/python train/combine_results.py results/icpo-offline results/icpo-online-cold \\
        results/icpo-online-warm results/icpo-online-warm-sharded --out results/icpo-online

Each folder is the small output of ``train/reproduce_online.py`` (or ``reproduce_icpo.py``):
``leaderboard.csv``, ``summary.json`` (every figure with its 95% interval, the trained model
paired against the base model on the same bootstrap resamples) and, where present,
``progress.csv``. A trained model's conversations are not committed, so the figures cannot be
re-estimated together; they are joined instead, which is sound only when every folder's base
model is the same measurement. This script checks that: the base model's leaderboard rows
(every column but the package ``version``) and its estimates, interval bounds included, must be
equal in every folder, or it stops with one error line and writes nothing. The paired
differences are then each folder's own, all against the same base.

It writes to ``--out``: ``leaderboard.csv`` (the base model's rows once, then every other
model's), ``summary.json``, ``progress.csv``, and ``summary.md`` (the sources, the issue's
targets for every trained model, the figures). Reports and training logs stay in the source
folders, which the summary names.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "train"))

from reproduce_icpo import rel  # noqa: E402
from reproduce_online import BASE, targets  # noqa: E402

from icpo_eval.compare import Estimate, formatted, markdown  # noqa: E402

#: The result files read, and the most of each that is read (a committed one is under 40 kB).
MAX_BYTES = 8 << 20
#: Leaderboard columns that may differ between folders whose base runs are the same measurement.
IGNORED_COLUMNS = {"version"}
_NUMBER_FIELDS = ("value", "lo", "hi", "diff", "diff_lo", "diff_hi")


class CombineError(Exception):
    """A folder that cannot be combined: the message is the one line the user sees."""


@dataclasses.dataclass
class Folder:
    """One result folder's tables."""

    path: Path
    header: list[str]
    rows: list[dict[str, str]]
    estimates: list[Estimate]
    progress: list[dict[str, str]]

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r["model"] for r in self.rows))


def _read(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise CombineError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > MAX_BYTES:
        raise CombineError(f"{path}: larger than {MAX_BYTES >> 20} MiB, not a result table")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CombineError(f"{path}: not UTF-8 text") from None


def _csv(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[dict[str, str]]]:
    try:
        reader = csv.DictReader(io.StringIO(_read(path)))
        header = list(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as e:
        raise CombineError(f"{path}: malformed CSV ({e})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise CombineError(f"{path}: no column {', '.join(missing)}")
    for i, row in enumerate(rows, 2):
        if None in row or any(v is None for v in row.values()):
            raise CombineError(f"{path}: line {i} has not {len(header)} fields")
    return header, rows


def _estimate(path: Path, i: int, item: object) -> Estimate:
    """One ``summary.json`` entry as an :class:`Estimate`, its types checked."""
    where = f"{path}: entry {i}"
    if not isinstance(item, dict):
        raise CombineError(f"{where} is not an object")
    for key in ("family", "mode", "figure", "model"):
        if not isinstance(item.get(key), str):
            raise CombineError(f"{where}: {key} is not a string")
    for key in _NUMBER_FIELDS:
        v = item.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise CombineError(f"{where}: {key} is not a number")
    n = item.get("n_instructions", 0)
    if isinstance(n, bool) or not isinstance(n, int):
        raise CombineError(f"{where}: n_instructions is not an integer")
    fields = {f.name for f in dataclasses.fields(Estimate)}
    return Estimate(**{k: v for k, v in item.items() if k in fields})


def load_folder(path: Path) -> Folder:
    """A result folder's leaderboard, estimates and (optional) progress table."""
    if not path.is_dir():
        raise CombineError(f"{path}: not a folder")
    header, rows = _csv(path / "leaderboard.csv", ("model", "family", "mode"))
    if not rows:
        raise CombineError(f"{path / 'leaderboard.csv'}: no rows")
    try:
        items = json.loads(_read(path / "summary.json"))
    except (json.JSONDecodeError, RecursionError) as e:
        raise CombineError(f"{path / 'summary.json'}: malformed JSON ({e})") from None
    if not isinstance(items, list):
        raise CombineError(f"{path / 'summary.json'}: not a list of estimates")
    estimates = [_estimate(path / "summary.json", i, it) for i, it in enumerate(items)]
    progress: list[dict[str, str]] = []
    if (path / "progress.csv").exists():
        _, progress = _csv(path / "progress.csv", ("family", "model"))
    return Folder(path, header, rows, estimates, progress)


def _base_rows(folder: Folder) -> dict[tuple[str, str], dict[str, str]]:
    return {
        (r["family"], r["mode"]): {k: v for k, v in r.items() if k not in IGNORED_COLUMNS}
        for r in folder.rows
        if r["model"] == BASE
    }


def _base_estimates(folder: Folder) -> dict[tuple[str, str, str], tuple]:
    return {
        (e.family, e.mode, e.figure): (e.value, e.lo, e.hi, e.n_instructions)
        for e in folder.estimates
        if e.model == BASE
    }


def check_same_base(folders: list[Folder]) -> None:
    """Raise unless every folder measured the base model, and measured it alike."""
    first = folders[0]
    for f in folders:
        if BASE not in f.models:
            raise CombineError(f"{f.path}: no {BASE} rows, nothing to pair against")
    ref_rows, ref_est = _base_rows(first), _base_estimates(first)
    for f in folders[1:]:
        rows = _base_rows(f)
        for key in sorted(set(ref_rows) | set(rows)):
            a, b = ref_rows.get(key), rows.get(key)
            if a is None or b is None:
                raise CombineError(
                    f"{f.path}: {BASE} {'/'.join(key)} is in only one of it and {first.path}"
                )
            diff = sorted(k for k in set(a) | set(b) if a.get(k, "") != b.get(k, ""))
            if diff:
                raise CombineError(
                    f"{f.path}: {BASE} {'/'.join(key)} differs from {first.path} in "
                    f"{', '.join(diff)}: not the same base measurement"
                )
        est = _base_estimates(f)
        for key in sorted(set(ref_est) & set(est)):
            if ref_est[key] != est[key]:
                raise CombineError(
                    f"{f.path}: the {BASE} estimate {' / '.join(key)} differs from "
                    f"{first.path}'s: not the same base measurement"
                )


def combine(folders: list[Folder]) -> tuple[list[str], list[dict], list[Estimate], list[dict]]:
    """The joined leaderboard header and rows, estimates and progress rows (base once)."""
    check_same_base(folders)
    owner: dict[str, Path] = {}
    for f in folders:
        for m in f.models:
            if m != BASE and m in owner:
                raise CombineError(f"{f.path}: {m} is in {owner[m]} too: which one to keep?")
            owner.setdefault(m, f.path)
    header = list(dict.fromkeys(c for f in folders for c in f.header))

    def split(f: Folder, base: bool) -> tuple[list, list, list]:
        """``f``'s leaderboard rows, estimates and progress rows of the base model or the rest."""
        return (
            [r for r in f.rows if (r["model"] == BASE) == base],
            [e for e in f.estimates if (e.model == BASE) == base],
            [r for r in f.progress if (r["model"] == BASE) == base],
        )

    rows, estimates, progress = split(folders[0], True)
    for f in folders:
        more = split(f, False)
        rows, estimates, progress = rows + more[0], estimates + more[1], progress + more[2]
    return header, rows, estimates, progress


def _csv_text(header: list[str], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write(folders: list[Folder], out: Path) -> list[Estimate]:
    """Combine ``folders`` into ``out`` (every check passes before anything is written)."""
    header, rows, estimates, progress = combine(folders)
    trained = [m for f in folders for m in f.models if m != BASE]
    sources = ["| folder | models | report and training logs |", "|---|---|---|"]
    for f in folders:
        models = ", ".join(m for m in f.models if m != BASE) or BASE
        sources.append(f"| `{rel(f.path.resolve())}` | {models} | `{rel(f.path.resolve())}/` |")
    summary = (
        "## Sources\n\n"
        "Each folder is its own run of the same held-out protocol; its base model's rows and "
        "estimates are equal in every folder (checked), so each trained model's paired "
        "difference is against the same base measurement.\n\n"
        + "\n".join(sources)
        + "\n\n## Targets (held-out, paired against the base model)\n\n"
        + targets(estimates, trained)
        + "\n## Figures with 95% bootstrap intervals\n\n"
        + markdown(formatted(estimates))
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.csv").write_text(_csv_text(header, rows))
    (out / "summary.json").write_text(
        json.dumps([dataclasses.asdict(e) for e in estimates], indent=1) + "\n"
    )
    if progress:
        prog_header = list(dict.fromkeys(c for f in folders for c in (f.progress[:1] or [{}])[0]))
        (out / "progress.csv").write_text(_csv_text(prog_header, progress))
    (out / "summary.md").write_text(summary)
    return estimates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path, help="result folders, the first one's base")
    ap.add_argument("--out", type=Path, required=True, help="the combined folder")
    a = ap.parse_args(argv)
    if len(a.folders) < 2:
        ap.error("give two or more folders")
    if a.out.resolve() in {f.resolve() for f in a.folders}:
        ap.error(f"--out {a.out} is one of the folders read")
    try:
        folders = [load_folder(f) for f in a.folders]
        write(folders, a.out)
    except CombineError as e:
        print(f"combine_results.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(
            f"combine_results.py: error: cannot write {a.out}: {e.strerror or e}", file=sys.stderr
        )
        return 2
    print((a.out / "summary.md").read_text())
    print(json.dumps({"results": rel(a.out.resolve())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
