"""The API backend end to end: whole conversations through litellm against the local server."""
# ruff: noqa: F811 -- pytest fixtures are imported from tests/fake_api.py

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from icpo_eval.cli import main
from icpo_eval.errors import IcpoError
from icpo_eval.metrics import summary_row
from icpo_eval.models.api import ApiClient, ApiSettings
from icpo_eval.models.api_errors import is_retryable, redact
from icpo_eval.models.base import GenParams
from icpo_eval.runner import run
from icpo_eval.store import read_conversations
from icpo_eval.testing.fake_server import FakeServer
from tests.fake_api import api_cache, api_spec, fake_server, tasks_file  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def assistant_texts(convs):
    return [t.content for c in convs for t in c.assistant_turns]


def test_sharded_run_through_litellm(tmp_path, tasks_file, fake_server):
    res = run(api_spec(tmp_path, tasks_file, fake_server.url), progress=False)
    by_task = {c.task_id: c for c in res.conversations}
    t1, t2 = by_task["t1"], by_task["t2"]
    assert t1.error is None and t2.error is None
    # The fake assistant asks while it has fewer than two numbers, then answers their sum.
    cats = [t.category for t in t1.assistant_turns]
    assert cats[-1] == "answer_attempt" and set(cats[:-1]) == {"clarification"}
    assert t1.final_score == 1.0  # 3 + 5 = 8
    assert t2.final_score == 0.0 and t2.assistant_turns[-1].answer == "8"
    for t in t1.assistant_turns:
        assert t.tokens_in and t.tokens_out and t.latency_s is not None
        assert t.cost is None  # a model litellm has no price for: null, not a crash
    assert all(text.startswith("[fake-a]") for text in assistant_texts(res.conversations))
    assert {r["role"] for r in fake_server.log.requests} == {"assistant"}


def test_retries_recover_from_faults(tmp_path, tasks_file, api_cache):
    with FakeServer(fault_rate=0.5, fault_kinds=("429", "500"), seed=3) as server:
        spec = api_spec(tmp_path, tasks_file, server.url, max_attempts=10, runs=2)
        res = run(spec, progress=False)
    assert sum(server.log.faults.values()) > 0
    assert all(c.error is None for c in res.conversations)
    assert len(res.conversations) == 4


def test_exhausted_retries_fail_the_conversation_not_the_run(tmp_path, tasks_file, api_cache):
    with FakeServer(fault_rate=0.35, hang_s=2.0, seed=1) as server:
        spec = api_spec(
            tmp_path, tasks_file, server.url, max_attempts=2, runs=6, timeout=0.3, modes=["full"]
        )
        res = run(spec, progress=False)
    convs = read_conversations(tmp_path / "run" / "conversations.jsonl")
    assert len(convs) == 12 == res.written
    failed = [c for c in convs if c.error is not None]
    ok = [c for c in convs if c.error is None]
    assert failed and ok, Counter(server.log.faults)
    for c in failed:  # recorded with its error, never scored 0
        assert c.final_score is None and "after 2 attempts" in c.error
    for c in ok:
        assert c.final_score is not None
    row = summary_row(convs)
    assert row["failed"] == len(failed) and row["n_conversations"] == len(ok)
    # A failed conversation is finished and on disk: a re-run skips it like the others.
    assert run(spec, progress=False).skipped == 12


def test_model_b_never_gets_model_a_cached_answers(tmp_path, tasks_file, fake_server):
    run(api_spec(tmp_path, tasks_file, fake_server.url, out=str(tmp_path / "a")), progress=False)
    sent_a = len(fake_server.log.requests)
    res_b = run(
        api_spec(
            tmp_path, tasks_file, fake_server.url, model="openai/fake-b", out=str(tmp_path / "b")
        ),
        progress=False,
    )
    models = Counter(r["model"] for r in fake_server.log.requests)
    assert models["fake-b"] == models["fake-a"] == sent_a  # B asked the server every time
    assert all(text.startswith("[fake-b]") for text in assistant_texts(res_b.conversations))
    # Model A again, into a new run directory: every reply comes from the cache.
    res_a2 = run(
        api_spec(tmp_path, tasks_file, fake_server.url, out=str(tmp_path / "a2")), progress=False
    )
    assert len(fake_server.log.requests) == 2 * sent_a
    assert all(text.startswith("[fake-a]") for text in assistant_texts(res_a2.conversations))
    # --no-cache goes to the server again.
    run(
        api_spec(tmp_path, tasks_file, fake_server.url, out=str(tmp_path / "a3"), cache=False),
        progress=False,
    )
    assert len(fake_server.log.requests) == 3 * sent_a


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_n_runs_of_one_instruction_are_n_distinct_requests(
    tmp_path, tasks_file, fake_server, temperature
):
    spec = api_spec(
        tmp_path, tasks_file, fake_server.url, runs=3, limit=1, modes=["full"],
        temperature=temperature,
    )  # fmt: skip
    res = run(spec, progress=False)
    assert len(res.conversations) == 3
    reqs = fake_server.log.requests
    assert len(reqs) == 3  # none of the three was answered from another's cache entry
    assert len({r["seed"] for r in reqs}) == 3


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydantic, on litellm's Router types
def test_replicas_share_the_load_through_the_router(tmp_path, tasks_file, api_cache):
    with FakeServer() as one, FakeServer() as two:
        spec = api_spec(tmp_path, tasks_file, [one.url, two.url], runs=4, transport="litellm")
        res = run(spec, progress=False)
    assert all(c.error is None for c in res.conversations)
    n1, n2 = len(one.log.requests), len(two.log.requests)
    assert n1 > 0 and n2 > 0, (n1, n2)


def test_direct_transport_for_hosted_vllm(tmp_path, tasks_file, fake_server):
    spec = api_spec(tmp_path, tasks_file, fake_server.url, model="hosted_vllm/fake-v")
    res = run(spec, progress=False)
    by_task = {c.task_id: c for c in res.conversations}
    assert by_task["t1"].final_score == 1.0
    assert all(text.startswith("[fake-v]") for text in assistant_texts(res.conversations))


def test_direct_transport_spreads_over_replicas(tmp_path, tasks_file, api_cache):
    with FakeServer() as one, FakeServer() as two:
        spec = api_spec(tmp_path, tasks_file, [one.url, two.url], model="hosted_vllm/fake-v")
        run(spec, progress=False)
    assert len(one.log.requests) > 0 and len(two.log.requests) > 0


def test_api_keys_never_reach_the_run_directory(tmp_path, tasks_file, api_cache, monkeypatch):
    secret = "sk-secret-test-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    with FakeServer(api_key=secret) as server:
        code = main(
            [
                "run", "--model", "openai/fake-a", "--tasks", str(tasks_file),
                "--modes", "sharded,recap", "--out", str(tmp_path / "run"),
                "--api-base", server.url, "--simulator", "llm:openai/fake-sim",
                "--simulator-api-base", server.url, "--judge", "llm:openai/fake-judge",
                "--judge-api-base", server.url, "--no-progress", "--retry-wait", "0.01",
            ]
        )  # fmt: skip
        assert code == 0
        assert server.log.unauthorised == 0  # the key from the environment was sent
        assert {r["role"] for r in server.log.requests} == {"assistant", "simulator", "judge"}
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    files += [p for p in api_cache.parent.glob("*") if p.is_file()]
    assert len(files) >= 3
    for p in files:
        assert secret.encode() not in p.read_bytes(), p
        assert b"sk-secret" not in p.read_bytes(), p
    # A wrong key stops the run with one line, and the line does not hold the key either.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-9876543210")
    with FakeServer(api_key=secret) as server:
        spec = api_spec(tmp_path, tasks_file, server.url, out=str(tmp_path / "bad"), cache=False)
        with pytest.raises(IcpoError) as err:
            run(spec, progress=False)
    assert "sk-wrong-key-9876543210" not in str(err.value)
    assert secret not in str(err.value)


def test_redact_and_retry_classification(monkeypatch):
    monkeypatch.setenv("SOME_API_KEY", "abcdef123456")
    assert redact("key abcdef123456 and Bearer xyz sk-abcdefghij") == (
        "key *** and Bearer *** sk-***"
    )

    class E(Exception):
        def __init__(self, code):
            self.status_code = code

    assert is_retryable(E(429)) and is_retryable(E(503)) and is_retryable(TimeoutError())
    assert not is_retryable(E(400)) and not is_retryable(ValueError())


def test_unknown_price_is_null_and_truncation_is_flagged(tmp_path, fake_server):
    client = ApiClient("openai/fake-a", ApiSettings([fake_server.url], cache=False))
    gen = client.complete(
        [{"role": "user", "content": "Tom has 3 apples and buys 5"}], GenParams(0, 1, 3), "x"
    )
    assert gen.cost is None and gen.truncated and gen.tokens_out == 3


def test_unknown_provider_is_a_user_error():
    with pytest.raises(IcpoError, match="unknown provider"):
        ApiClient("nosuchprovider/x", ApiSettings(cache=False))


def test_api_run_does_not_import_torch(tmp_path, tasks_file, fake_server):
    code = f"""
import sys
from icpo_eval.cli import main
rc = main(["run", "--model", "openai/fake-a", "--tasks", {str(tasks_file)!r}, "--modes", "full",
           "--out", {str(tmp_path / "run")!r}, "--api-base", {fake_server.url!r}, "--no-progress"])
heavy = [m for m in ("torch", "transformers") if m in sys.modules]
print("HEAVY", heavy, "RC", rc)
"""
    env = dict(os.environ, ICPO_EVAL_CACHE=str(tmp_path / "c2"))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert "HEAVY [] RC 0" in proc.stdout, proc.stdout + proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr
    convs = [json.loads(x) for x in (tmp_path / "run" / "conversations.jsonl").open()]
    assert len(convs) == 2 and all(c["error"] is None for c in convs)
