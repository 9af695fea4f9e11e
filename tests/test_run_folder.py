"""The store's promises across processes: one writer per run folder (a second is refused,
naming the holder), a ``kill -9`` never leaves the folder stuck and a resume then writes every
conversation exactly once; and on the API path a conversation's next turn goes ahead of the
conversations not yet started."""
# ruff: noqa: F811 -- pytest fixtures are imported from tests/fake_api.py

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from icpo_eval.errors import IcpoError
from icpo_eval.records import Instruction, RunSpec, Shard
from icpo_eval.runner import run
from icpo_eval.store import CONVERSATIONS, RunStore, read_conversations
from icpo_eval.tasksets import write_jsonl
from icpo_eval.testing.fake_server import FakeServer
from tests.fake_api import api_cache, api_spec  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def many_tasks(path: Path, n: int) -> Path:
    """``n`` math instructions of 3 shards, each with a first shard of its own (so that the
    server's log tells the conversations apart)."""
    insts = [
        Instruction(
            task_id=f"m{i}",
            task="math",
            shards=[
                Shard(1, f"How many apples does farmer {i} have at the end?"),
                Shard(2, "The farmer starts with 3 apples."),
                Shard(3, "The farmer buys 5 more apples."),
            ],
            fields={"question": "?", "answer": "8"},
        )
        for i in range(n)
    ]
    write_jsonl(insts, path)
    return path


def holder(directory: Path) -> subprocess.Popen:
    """A child process that opens the run folder, says so, and then waits."""
    code = (
        "import sys, time\n"
        "from icpo_eval.records import RunSpec\n"
        "from icpo_eval.store import RunStore\n"
        f"RunStore.open({str(directory)!r}, RunSpec(model='m', out={str(directory)!r}))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def test_a_second_writer_is_refused_and_kill_9_frees_the_folder(tmp_path):
    folder = tmp_path / "run"
    child = holder(folder)
    try:
        with pytest.raises(IcpoError, match=rf"another icpo-eval run \(pid {child.pid}\)"):
            RunStore.open(folder, RunSpec(model="m", out=str(folder)))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    store, done = RunStore.open(folder, RunSpec(model="m", out=str(folder)))  # not stuck
    assert done == set()
    store.close()
    # Closing releases it: the folder opens again in the same process.
    RunStore.open(folder, RunSpec(model="m", out=str(folder)))[0].close()


def cli_run(tasks: Path, url: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "icpo_eval.cli", "run", "--model", "hosted_vllm/fake-a",
         "--api-base", url, "--tasks", str(tasks), "--modes", "sharded", "--concurrency", "2",
         "--no-progress", "--no-cache", "--out", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV,
    )  # fmt: skip


def lines_of(out: Path) -> list[str]:
    path = out / CONVERSATIONS
    if not path.exists():
        return []
    return [x for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_two_runs_at_once_and_a_kill_9_then_resume_write_each_conversation_once(tmp_path):
    tasks = many_tasks(tmp_path / "tasks.jsonl", 12)
    out = tmp_path / "run"
    with FakeServer(latency=0.15) as server:
        first = cli_run(tasks, server.url, out)
        time.sleep(0.5)
        second = cli_run(tasks, server.url, out)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2 and f"pid {first.pid}" in err, err
        deadline = time.time() + 60
        while len(lines_of(out)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # mid-run: some conversations written, some not
        first.wait()
        written = len(lines_of(out))
        assert 0 < written < 12, written
        resumed = cli_run(tasks, server.url, out)
        stdout, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
    ids = [json.loads(x)["conversation_id"] for x in lines_of(out)]
    assert len(ids) == len(set(ids)) == 12
    assert f"{12 - written} conversations written, {written} already done" in stdout


def test_started_conversations_go_first(tmp_path, api_cache):
    """Forty sharded conversations at concurrency 4: a conversation's next turns go ahead of the
    first turns of conversations not yet started, so the first conversation finishes while at
    most ``2 x concurrency`` have started (before, all forty had started)."""
    tasks = many_tasks(tmp_path / "tasks.jsonl", 40)
    with FakeServer(latency=0.01) as server:
        spec = api_spec(tmp_path, tasks, server.url, concurrency=4, model="hosted_vllm/fake-a")
        run(spec, progress=False)
        order = [
            next(m["content"] for m in r["messages"] if m["role"] == "user")
            for r in server.log.by_role("assistant")
        ]
    convs = read_conversations(Path(spec.out) / CONVERSATIONS)
    assert len(convs) == 40 and all(c.error is None for c in convs)
    turns = Counter(order)  # requests per conversation, named by its first user message
    seen: dict[str, int] = {}
    started_when_first_done = None
    for text in order:
        seen[text] = seen.get(text, 0) + 1
        if seen[text] == turns[text] and started_when_first_done is None:
            started_when_first_done = len(seen)
    assert started_when_first_done is not None and started_when_first_done <= 2 * 4
    assert max(turns.values()) >= 2  # the conversations are multi-turn


def test_a_run_that_fails_after_opening_its_folder_releases_it(tmp_path):
    """A backend that cannot load (or any error once the store is open) leaves the folder
    free: the same process, or the next run, opens it again."""
    tasks = many_tasks(tmp_path / "tasks.jsonl", 2)
    spec = RunSpec(model="hf/" + str(tmp_path / "no-such-checkpoint"), tasks=str(tasks),
                   modes=["full"], out=str(tmp_path / "run"))  # fmt: skip
    with pytest.raises(Exception):  # noqa: B017 -- whichever error loading raises
        run(spec, progress=False)
    RunStore.open(tmp_path / "run", spec)[0].close()
