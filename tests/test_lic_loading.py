"""Lost-in-Conversation data as its users have it: one loader for every door, string-encoded
fields, tasks icpo-eval lacks, repeated ids, empty shards, long records, and the checks that
must fail before the first model call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from icpo_eval.errors import IcpoError
from icpo_eval.leaderboard import build
from icpo_eval.records import TURN_MARGIN, RunSpec
from icpo_eval.runner import run
from icpo_eval.store import CONVERSATIONS, read_conversations
from icpo_eval.tasksets import load_tasks
from tests.conftest import ScriptedBackend

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def math_record(task_id: str = "sharded-gsm8k-1", n: int = 10) -> dict:
    """A GSM8K record sharded as LiC does, ``n`` shards: 1 + 2 + ... + (n - 1) marbles."""
    shards = [{"shard_id": 1, "shard": "How many marbles does Omar have in the end?"}]
    shards += [
        {"shard_id": i, "shard": f"On day {i - 1} he finds {i - 1} more marbles."}
        for i in range(2, n + 1)
    ]
    total = sum(range(1, n))
    return {
        "task_id": task_id,
        "task": "math",
        "shards": shards,
        "question": "Omar starts with none and finds 1, 2, ... marbles on successive days.",
        "answer": f"He adds them up.\n#### {total}",
    }


def actions_record() -> dict:
    """A BFCL record of LiC: ``function`` and ``reference_answer`` written as strings."""
    function = [
        {
            "name": "get_weather",
            "description": "Weather of a city.",
            "parameters": {
                "type": "dict",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    return {
        "task_id": "sharded-bfcl-1",
        "task": "actions",
        "shards": [
            {"shard_id": 1, "shard": "What's the weather like?"},
            {"shard_id": 2, "shard": "In Lyon."},
        ],
        "function": json.dumps(function),
        "reference_answer": str([{"get_weather": {"city": ["Lyon"]}}]),  # a Python literal
        "fully_specified_question": json.dumps([[{"role": "user", "content": "Weather in Lyon?"}]]),
    }


def mixed_records() -> list[dict]:
    """The benchmark's layout: several tasks in one array, one of them unknown to icpo-eval,
    an id given twice (two shardings), an empty shard, fields as strings."""
    translation = json.loads((DATA / "lic_translation.json").read_text())[0]
    twice = math_record("sharded-gsm8k-2", n=4)
    other = math_record("sharded-gsm8k-2", n=5)
    with_empty = math_record("sharded-gsm8k-3", n=4)
    with_empty["shards"].insert(2, {"shard_id": 9, "shard": "   "})
    poem = {"task_id": "p1", "task": "poetry", "shards": [{"shard_id": 1, "shard": "A poem."}]}
    return [math_record(), actions_record(), translation, twice, other, with_empty, poem, poem]


def write_all_doors(tmp_path: Path, records: list[dict]) -> dict[str, str]:
    """The same records as a LiC JSON array, a JSONL file and a saved Hugging Face dataset."""
    lic = tmp_path / "lic.json"
    lic.write_text(json.dumps(records))
    jsonl = tmp_path / "lic.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    import datasets

    # Arrow needs one type per column: nested fields travel as JSON strings, as on the hub.
    columns = sorted({k for r in records for k in r})
    rows = [
        {k: (json.dumps(r[k]) if isinstance(r.get(k), (list, dict)) else r.get(k)) for k in columns}
        for r in records
    ]
    saved = tmp_path / "hf"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    return {"lic": f"lic:{lic}", "jsonl": str(jsonl), "hf": f"hf:{saved}"}


def test_every_door_reads_the_same_records_with_the_same_rules(tmp_path, capsys):
    doors = write_all_doors(tmp_path, mixed_records())
    got = {}
    for door, spec in doors.items():
        insts = load_tasks(spec)
        err = capsys.readouterr().err
        got[door] = [i.to_dict() for i in insts]
        # One line per rule, each counting what it did.
        assert "skipped records of tasks icpo-eval does not have (2 poetry)" in err, door
        assert "dropped 1 shards whose text is empty" in err, door
        assert "1 records repeat a task_id" in err, door
        assert "Traceback" not in err
    assert got["lic"] == got["jsonl"] == got["hf"]
    ids = [r["task_id"] for r in got["lic"]]
    assert ids == [
        "sharded-gsm8k-1",
        "sharded-bfcl-1",
        "wmt-test-0-de-en",
        "sharded-gsm8k-2",
        "sharded-gsm8k-2#2",
        "sharded-gsm8k-3",
    ]
    by_id = {r["task_id"]: r for r in got["lic"]}
    assert len(by_id["sharded-gsm8k-2#2"]["shards"]) == 5  # the second sharding, renamed
    assert [s["shard_id"] for s in by_id["sharded-gsm8k-3"]["shards"]] == [1, 2, 3, 4]
    actions = by_id["sharded-bfcl-1"]
    assert actions["reference_answer"] == [{"get_weather": {"city": ["Lyon"]}}]
    assert actions["function"][0]["name"] == "get_weather"
    # Loading again gives the same ids: conversation ids stay stable across runs.
    assert [i.task_id for i in load_tasks(doors["lic"])] == ids


def test_strict_refuses_tasks_icpo_eval_lacks(tmp_path):
    doors = write_all_doors(tmp_path, mixed_records())
    for spec in doors.values():
        with pytest.raises(IcpoError, match=r"task 'poetry' is not one icpo-eval has"):
            load_tasks(spec, strict=True)


def test_a_literal_is_decoded_but_never_evaluated(tmp_path):
    rec = actions_record()
    rec["reference_answer"] = "__import__('os').system('touch /tmp/pwned-icpo')"
    path = tmp_path / "lic.json"
    path.write_text(json.dumps([rec]))
    (inst,) = load_tasks(f"lic:{path}")
    assert inst.fields["reference_answer"] == rec["reference_answer"]  # left a string
    assert not Path("/tmp/pwned-icpo").exists()


def waits_for_everything(messages) -> str:
    """An oracle that asks until it has heard all ten shards, then answers 45."""
    said = " ".join(m["content"] for m in messages if m["role"] == "user")
    if "day 9" in said:
        return "Adding them up: 1 + 2 + ... + 9 = 45.\nAnswer: 45"
    return "Did Omar find any more marbles after that?"


def run_ten_shards(tmp_path: Path, **kw) -> list:
    path = tmp_path / "ten.json"
    path.write_text(json.dumps([math_record()]))
    spec = RunSpec(
        model="scripted", tasks=f"lic:{path}", modes=["sharded"], out=str(tmp_path / "run"), **kw
    )
    run(spec, backend=ScriptedBackend(waits_for_everything), progress=False)
    return read_conversations(tmp_path / "run" / CONVERSATIONS)


def test_an_oracle_that_waits_for_the_last_shard_scores_one_by_default(tmp_path):
    (conv,) = run_ten_shards(tmp_path)
    assert conv.final_score == 1.0 and conv.capped_unrevealed is None
    assert len(conv.assistant_turns) <= 10 + TURN_MARGIN


def test_an_explicit_cap_that_hides_shards_is_marked(tmp_path):
    (conv,) = run_ten_shards(tmp_path, max_turns=5)
    assert conv.final_score == 0.0 and len(conv.assistant_turns) == 5
    assert conv.capped_unrevealed == 5  # shards 7..10 and one more never said
    row = build([tmp_path / "run"]).iloc[0]
    assert row["capped"] == 1


def cli(*args: str, keys: bool = True) -> subprocess.CompletedProcess:
    """``icpo-eval ARGS`` in a child process; ``keys`` False: without any ``*_API_KEY``."""
    env = {k: v for k, v in os.environ.items() if keys or not k.endswith("_API_KEY")}
    env.update(HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True")
    return subprocess.run(
        [sys.executable, "-m", "icpo_eval.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_missing_credentials_stop_the_run_before_any_call(tmp_path):
    proc = cli(
        "run", "--model", "openai/gpt-4o-mini", "--limit", "2", "--no-progress",
        "--out", str(tmp_path / "r"), keys=False,
    )  # fmt: skip
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "OPENAI_API_KEY" in lines[0] and "--api-base" in lines[0]
    assert not (tmp_path / "r" / CONVERSATIONS).exists()
    # The judge's key is checked too.
    proc = cli(
        "run", "--model", "local/smollm2", "--judge", "llm:anthropic/claude-3-5-haiku-20241022",
        "--out", str(tmp_path / "r2"), keys=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "ANTHROPIC_API_KEY" in proc.stderr, proc.stderr


def test_a_run_in_which_every_conversation_failed_exits_non_zero(tmp_path):
    proc = cli(
        "run", "--model", "hosted_vllm/fake", "--api-base", "http://127.0.0.1:9/v1",
        "--limit", "2", "--modes", "full", "--max-attempts", "1", "--timeout", "0.5",
        "--retry-wait", "0", "--no-cache", "--no-progress", "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "all 2 conversations failed" in proc.stderr
    assert "never awaited" not in proc.stderr and "Traceback" not in proc.stderr
    assert len(read_conversations(tmp_path / "r" / CONVERSATIONS)) == 2  # kept, as failed


def test_a_closed_pipe_ends_quietly():
    proc = subprocess.run(
        f"{sys.executable} -m icpo_eval.cli tasks show math --n 50 | head -1",
        shell=True, capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.stdout.strip() == "{" and proc.stderr == "", proc.stderr


def _encoded(rec: dict, *keys: str) -> dict:
    """``rec`` with ``keys`` written as strings, as LiC's release and Arrow datasets have them:
    JSON for some, Python literals for others."""
    out = dict(rec)
    for i, k in enumerate(keys):
        out[k] = json.dumps(rec[k]) if i % 2 == 0 else repr(rec[k])
    return out


def seven_tasks(tmp_path: Path) -> tuple[list[dict], dict[str, str]]:
    """One record of each of LiC's six tasks plus translation, in one array, with the answer
    the benchmark's reference gives for each."""
    import sqlite3

    from icpo_eval.tasksets import read_jsonl

    db = tmp_path / "spider" / "concert_singer" / "concert_singer.sqlite"
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE singer (singer_id int, name text, country text);"
        "INSERT INTO singer VALUES (1, 'Ana', 'France'), (2, 'Bo', 'Spain'), (3, 'Cy', 'France');"
    )
    conn.commit()
    conn.close()
    database = {
        "task_id": "sharded-spider-1",
        "task": "database",
        "shards": [
            {"shard_id": 1, "shard": "How many singers do we have?"},
            {"shard_id": 2, "shard": "Only French ones."},
        ],
        "db_id": "concert_singer",
        "schema_sql": "CREATE TABLE singer (singer_id int, name text, country text)",
        "reference_sql": "SELECT count(*) FROM singer WHERE country = 'France'",
    }
    code = {
        "task_id": "sharded-HumanEval/0",
        "task": "code",
        "shards": [
            {"shard_id": 1, "shard": "Write has_close(numbers, threshold)."},
            {"shard_id": 2, "shard": "True when two numbers are closer than the threshold."},
        ],
        "prompt": "def has_close(numbers, threshold):\n",
        "entry_point": "has_close",
        "test": "def check(candidate):\n    assert candidate([1.0, 2.0, 3.9, 4.0], 0.3)\n"
        "    assert not candidate([1.0, 2.0, 3.0], 0.5)\n",
    }
    data2text = read_jsonl(ROOT / "tasks" / "data2text.jsonl")[0].to_dict()
    summary = read_jsonl(ROOT / "tasks" / "summary.jsonl")[0].to_dict()
    # LiC's summary shards name their documents by doc_idxs, with no text of their own.
    n_docs = len(summary["documents"])
    summary["shards"] = (
        summary["shards"][:1]
        + [
            {"shard_id": 90, "shard": "", "doc_idxs": list(range(0, n_docs // 2))},
            {"shard_id": 91, "shard": "", "doc_idxs": list(range(n_docs // 2, n_docs))},
        ]
        + summary["shards"][1:]
    )
    summary.pop("required_shards")
    data2text.pop("required_shards")
    translation = json.loads((DATA / "lic_translation.json").read_text())[0]
    records = [
        math_record(),
        code,
        database,
        actions_record(),
        _encoded(data2text, "raw_table", "references", "metadata"),
        _encoded(summary, "documents", "insights", "insightid2ref_citations"),
        translation,
    ]
    answers = {
        "sharded-gsm8k-1": "Answer: 45",
        "sharded-HumanEval/0": "```python\ndef has_close(numbers, threshold):\n"
        "    s = sorted(numbers)\n    return any(b - a < threshold for a, b in zip(s, s[1:]))\n```",
        "sharded-spider-1": "```sql\nSELECT count(*) FROM singer WHERE country = 'France'\n```",
        "sharded-bfcl-1": "get_weather(city='Lyon')",
        data2text["task_id"]: data2text["references"][0],
        summary["task_id"]: summary["reference_summary"],
        translation["task_id"]: translation["document_en"],
    }
    return records, answers


def test_the_benchmarks_seven_tasks_in_one_file_score_their_references(tmp_path, monkeypatch):
    from icpo_eval.families import get_family
    from icpo_eval.runner import preflight

    monkeypatch.setenv("ICPO_EVAL_SPIDER_DIR", str(tmp_path / "spider"))
    records, answers = seven_tasks(tmp_path)
    path = tmp_path / "lic.json"
    path.write_text(json.dumps(records))
    insts = load_tasks(f"lic:{path}")
    assert sorted(i.task for i in insts) == sorted(
        ["math", "code", "database", "actions", "data2text", "summary", "translation"]
    )
    preflight(RunSpec(model="x", tasks=f"lic:{path}"), insts)
    for inst in insts:
        family = get_family(inst.task)
        score, _ = family.grade(inst, family.extract(inst, answers[inst.task_id]))
        assert score >= 0.99, inst.task_id
        wrong = answers["sharded-bfcl-1"] if inst.task != "actions" else "get_weather(city='Oslo')"
        assert family.grade(inst, family.extract(inst, wrong))[0] <= 0.2, inst.task_id
    summary = next(i for i in insts if i.task == "summary")
    # The documents came in the shards that named them, not all at once in the system prompt.
    assert summary.fields["documents_in_shards"] is True
    assert all(s.shard.strip() for s in summary.shards)
    assert sum("Here are more documents" in s.shard for s in summary.shards) == 2
    assert "Document" not in get_family("summary").system_prompt(summary).split("\n", 3)[-1]


def test_a_missing_spider_database_stops_the_run_before_any_call(tmp_path, monkeypatch):
    monkeypatch.setenv("ICPO_EVAL_SPIDER_DIR", str(tmp_path / "nowhere"))
    records, _ = seven_tasks(tmp_path)
    path = tmp_path / "lic.json"
    path.write_text(json.dumps(records))
    backend = ScriptedBackend(lambda m: "Answer: 1")
    spec = RunSpec(model="scripted", tasks=f"lic:{path}", modes=["full"], out=str(tmp_path / "r"))
    with pytest.raises(IcpoError, match="concert_singer") as err:
        run(spec, backend=backend, progress=False)
    assert str(tmp_path / "nowhere") in str(err.value) and "\n" not in str(err.value)
    assert backend.calls == []  # nothing was asked of the model
