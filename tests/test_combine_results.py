"""train/combine_results.py: result folders of separate runs joined on one leaderboard, only
when their base model is the same measurement; bad folders get one error line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from icpo_eval.testing.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
#: Committed runs of train/reproduce_online.py, each with the base model and one trained model.
SOURCES = ("icpo-online-warm", "icpo-online-warm-sharded")
BASE = "local/smollm2"


@pytest.fixture(scope="module")
def script():
    return load_script(ROOT / "train" / "combine_results.py")


@pytest.fixture
def folders(tmp_path) -> list[Path]:
    out = []
    for name in SOURCES:
        shutil.copytree(RESULTS / name, tmp_path / name)
        out.append(tmp_path / name)
    return out


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def run(script, capsys, *argv: str) -> tuple[int, str]:
    code = script.main(list(argv))
    return code, capsys.readouterr().err.strip()


def test_joined_leaderboard_holds_the_base_once_and_every_trained_model(
    script, folders, tmp_path, capsys
):
    out = tmp_path / "combined"
    code, err = run(script, capsys, *map(str, folders), "--out", str(out))
    assert code == 0, err
    got = rows(out / "leaderboard.csv")
    per_model = {}
    for r in got:
        per_model.setdefault(r["model"], []).append(r)
    sources = [rows(f / "leaderboard.csv") for f in folders]
    trained = [next(r["model"] for r in s if r["model"] != BASE) for s in sources]
    assert list(per_model) == [BASE, *trained]
    assert per_model[BASE] == [r for r in sources[0] if r["model"] == BASE]
    for model, source in zip(trained, sources, strict=True):
        assert per_model[model] == [r for r in source if r["model"] == model]
    # Every trained model's five targets, with its own folder's paired difference.
    summary = (out / "summary.md").read_text()
    for model in trained:
        assert sum(line.startswith(f"| {model} | ") for line in summary.splitlines()) >= 5
    est = json.loads((out / "summary.json").read_text())
    base_est = [e for e in est if e["model"] == BASE]
    assert base_est == [
        e for e in json.loads((folders[0] / "summary.json").read_text()) if e["model"] == BASE
    ]
    assert {e["model"] for e in est} == {BASE, *trained}
    progress = rows(out / "progress.csv")
    assert sum(r["model"] == BASE for r in progress) == sum(
        r["model"] == BASE for r in rows(folders[0] / "progress.csv")
    )


def test_the_committed_combined_folder_is_what_the_script_writes(script, tmp_path, capsys):
    committed = RESULTS / "icpo-online"
    lines = (committed / "summary.md").read_text().splitlines()
    sources = [line.split("`")[1] for line in lines if line.startswith("| `results/")]
    assert len(sources) >= 3, "results/icpo-online/summary.md names its source folders"
    out = tmp_path / "again"
    code, err = run(script, capsys, *(str(ROOT / s) for s in sources), "--out", str(out))
    assert code == 0, err
    for name in ("leaderboard.csv", "summary.json", "progress.csv"):
        assert (out / name).read_text() == (committed / name).read_text(), name
    models = {r["model"] for r in rows(committed / "leaderboard.csv")}
    assert BASE in models and any("online" in m for m in models)
    assert any(m.endswith("smollm2-icpo") for m in models), "offline ICPO has a row"


def test_a_different_base_measurement_is_refused_and_nothing_written(
    script, folders, tmp_path, capsys
):
    board = folders[1] / "leaderboard.csv"
    text = board.read_text().splitlines()
    i = next(k for k, line in enumerate(text) if line.startswith(BASE + ",math,sharded,"))
    cells = text[i].split(",")
    cells[3] = str(float(cells[3]) + 0.2)  # P
    text[i] = ",".join(cells)
    board.write_text("\n".join(text) + "\n")
    out = tmp_path / "combined"
    code, err = run(script, capsys, *map(str, folders), "--out", str(out))
    assert code == 2
    assert len(err.splitlines()) == 1 and "math/sharded" in err and "P" in err
    assert not out.exists()


def test_a_base_estimate_that_differs_is_refused(script, folders, tmp_path, capsys):
    path = folders[1] / "summary.json"
    items = json.loads(path.read_text())
    next(e for e in items if e["model"] == BASE)["hi"] += 0.1
    path.write_text(json.dumps(items))
    code, err = run(script, capsys, *map(str, folders), "--out", str(tmp_path / "c"))
    assert code == 2 and "estimate" in err and "not the same base" in err


def test_only_the_package_version_may_differ(script, folders, tmp_path, capsys):
    board = folders[1] / "leaderboard.csv"
    board.write_text(board.read_text().replace(",0.1.0\n", ",9.9.9\n"))
    code, err = run(script, capsys, *map(str, folders), "--out", str(tmp_path / "c"))
    assert code == 0, err


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("summary.json", "[" * 100_000, "malformed JSON"),
        ("summary.json", '{"figure": "P"}', "not a list"),
        (
            "summary.json",
            '[{"family": "math", "mode": "full", "figure": "P", "model": "m", "value": "12.5"}]',
            "value is not a number",
        ),
        (
            "summary.json",
            '[{"family": "math", "mode": "full", "figure": "P", "model": "m",'
            ' "value": 1, "n_instructions": true}]',
            "n_instructions",
        ),
        ("summary.json", "[1, 2]", "entry 0 is not an object"),
        ("leaderboard.csv", "model,family,mode,P\nlocal/smollm2,math,full\n", "line 2"),
        ("leaderboard.csv", "name,P\nx,1\n", "no column model"),
        ("leaderboard.csv", "model,family,mode\n", "no rows"),
        ("leaderboard.csv", b"\xff\xfe model", "not UTF-8"),
    ],
)
def test_a_hostile_file_gets_one_error_line(
    script, folders, tmp_path, capsys, name, content, message
):
    path = folders[1] / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    out = tmp_path / "c"
    code, err = run(script, capsys, *map(str, folders), "--out", str(out))
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err and str(folders[1]) in err
    assert not out.exists()


def test_an_oversized_file_is_not_read(script, folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(script, "MAX_BYTES", 1000)
    code, err = run(script, capsys, *map(str, folders), "--out", str(tmp_path / "c"))
    assert code == 2 and "larger than" in err


def test_one_trained_model_in_two_folders_is_ambiguous(script, folders, tmp_path, capsys):
    twin = tmp_path / "twin"
    shutil.copytree(folders[0], twin)
    code, err = run(script, capsys, str(folders[0]), str(twin), "--out", str(tmp_path / "c"))
    assert code == 2 and "which one to keep" in err


def test_out_may_not_be_a_source_and_one_folder_is_not_enough(script, folders, capsys):
    with pytest.raises(SystemExit) as exc:
        script.main([str(folders[0]), str(folders[1]), "--out", str(folders[1])])
    assert exc.value.code == 2 and "one of the folders read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        script.main([str(folders[0]), "--out", "x"])
    assert exc.value.code == 2


def test_a_folder_without_the_base_model_has_nothing_to_pair_against(
    script, folders, tmp_path, capsys
):
    for name in ("leaderboard.csv", "summary.json", "progress.csv"):
        path = folders[1] / name
        if name.endswith(".json"):
            items = [e for e in json.loads(path.read_text()) if e["model"] != BASE]
            path.write_text(json.dumps(items))
        else:
            text = path.read_text().splitlines()
            path.write_text("\n".join(t for t in text if BASE not in t) + "\n")
    code, err = run(script, capsys, *map(str, folders), "--out", str(tmp_path / "c"))
    assert code == 2 and "nothing to pair against" in err


def test_an_out_that_cannot_be_written_gets_one_error_line(script, folders, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = run(script, capsys, *map(str, folders), "--out", str(blocker / "combined"))
    assert code == 2 and len(err.splitlines()) == 1 and "cannot write" in err
