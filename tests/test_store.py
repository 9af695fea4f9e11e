import json

import pytest

from icpo_eval.errors import IcpoError
from icpo_eval.records import Conversation, RunSpec
from icpo_eval.store import RunStore, load_run, read_conversations
from tests.conftest import make_conversation


def conv(i: int) -> Conversation:
    return make_conversation(
        conversation_id=f"c{i}", task_id=f"t{i}", mode="full", seed=i, final_score=0.0
    )


def test_append_then_resume_reports_done_ids(tmp_path):
    spec = RunSpec(model="m", out=str(tmp_path))
    store, done = RunStore.open(tmp_path, spec)
    assert done == set()
    store.append(conv(1))
    store.append(conv(2))
    store.close()
    assert json.loads((tmp_path / "run.json").read_text())["model"] == "m"
    _, done = RunStore.open(tmp_path, spec)
    assert done == {"c1", "c2"}


def test_torn_last_line_is_dropped_and_repaired(tmp_path, capsys):
    spec = RunSpec(model="m", out=str(tmp_path))
    store, _ = RunStore.open(tmp_path, spec)
    store.append(conv(1))
    store.close()
    path = tmp_path / "conversations.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps(conv(2).to_dict())[:40])  # a crash in the middle of a write
    store, done = RunStore.open(tmp_path, spec)
    assert done == {"c1"}
    assert "torn last line" in capsys.readouterr().err
    store.append(conv(2))
    store.close()
    ids = [c.conversation_id for c in read_conversations(path)]
    assert ids == ["c1", "c2"]  # the torn bytes are gone, not glued to the next record


def test_resume_with_other_settings_is_refused(tmp_path):
    RunStore.open(tmp_path, RunSpec(model="m", out=str(tmp_path)))[0].close()
    with pytest.raises(IcpoError, match="other settings.*temperature"):
        RunStore.open(tmp_path, RunSpec(model="m", temperature=0.7, out=str(tmp_path)))


def test_corrupt_middle_line_is_an_error(tmp_path):
    (tmp_path / "conversations.jsonl").write_text('{"x": \nnot json\n')
    with pytest.raises(IcpoError, match=":1: not a conversation record"):
        load_run(tmp_path)
