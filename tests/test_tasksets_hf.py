"""`--tasks hf:NAME`: LiC-format records through Hugging Face datasets, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icpo_eval.errors import IcpoError
from icpo_eval.families import get_family
from icpo_eval.tasksets import load_tasks, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


def _rows() -> list[dict]:
    """Records of several families flattened as LiC's hub release stores them: nested fields
    as JSON strings, one column set shared by all records (None where a record has no value)."""
    math = read_jsonl(ROOT / "tasks" / "math.jsonl")[0].to_dict()
    actions = read_jsonl(ROOT / "tasks" / "actions.jsonl")[0].to_dict()
    translation = json.loads((DATA / "lic_translation.json").read_text())[0]
    summary = {
        "task_id": "sharded-summ-1",
        "task": "poetry",
        "shards": [{"shard_id": 1, "shard": "Summarise."}],
    }
    records = [math, actions, translation, summary]
    columns = sorted({k for r in records for k in r})
    rows = []
    for r in records:
        row = {}
        for c in columns:
            v = r.get(c)
            row[c] = json.dumps(v) if isinstance(v, (list, dict)) else v
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[c] = str(v)  # one Arrow type per column across families
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import datasets

    path = tmp_path_factory.mktemp("hf") / "lic_small"
    datasets.Dataset.from_list(_rows()).save_to_disk(str(path))
    return path


def test_round_trip_from_save_to_disk(saved: Path, capsys: pytest.CaptureFixture) -> None:
    insts = load_tasks(f"hf:{saved}")
    assert [i.task for i in insts] == ["math", "actions", "translation"]
    assert "(1 poetry)" in capsys.readouterr().err  # unknown tasks are skipped, and said so
    math, actions, translation = insts
    original = read_jsonl(ROOT / "tasks" / "actions.jsonl")[0]
    assert actions.shards == original.shards
    assert actions.required_shards == original.required_shards
    assert actions.fields["reference_answer"] == original.fields["reference_answer"]
    fam = get_family("actions")
    assert fam.evaluate(actions, fam.extract(actions, actions.fields["answer"])) == 1.0
    tr = get_family("translation")
    assert tr.evaluate(translation, translation.fields["document_en"]) == 1.0
    assert translation.required_shards is None  # LiC: every shard required
    assert "schema_sql" not in math.fields  # None columns of other families are dropped
    assert load_tasks(f"hf:{saved}:train", limit=2)[1].task_id == actions.task_id


def test_dataset_dict_and_split(tmp_path: Path) -> None:
    import datasets

    rows = _rows()[:2]
    dd = datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(rows), "dev": datasets.Dataset.from_list(rows[:1])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(load_tasks(f"hf:{tmp_path / 'dd'}:dev")) == 1
    with pytest.raises(IcpoError, match="no split 'train'"):
        load_tasks(f"hf:{tmp_path / 'dd'}")
    with pytest.raises(IcpoError, match="no split 'nope'"):
        load_tasks(f"hf:{tmp_path / 'dd'}:nope")


def test_local_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "recs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()[1:3]))
    insts = load_tasks(f"hf:{path}")
    assert [i.task for i in insts] == ["actions", "translation"]


def test_missing_dataset_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IcpoError, match=r"^hf:nobody/no-such-dataset-xyz: cannot load dataset"):
        load_tasks("hf:nobody/no-such-dataset-xyz")
    with pytest.raises(IcpoError, match="cannot load dataset"):
        load_tasks(f"hf:{tmp_path / 'absent'}")
    bad = tmp_path / "x.txt"
    bad.write_text("hi")
    with pytest.raises(IcpoError, match="unsupported file type"):
        load_tasks(f"hf:{bad}")


def test_malformed_record_names_where(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "bad"
    datasets.Dataset.from_list([{"task_id": "a", "task": "math", "shards": "[]"}]).save_to_disk(
        str(path)
    )
    with pytest.raises(IcpoError, match=r"record 0: 'shards' must be a non-empty list"):
        load_tasks(f"hf:{path}")
