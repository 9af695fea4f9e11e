"""``icpo-eval run --workers N``: conversations on Ray actors, the driver the only writer.

The Ray tests share one local Ray instance (2 CPUs, no dashboard), started once for the module
and always shut down; :func:`icpo_eval.distributed.run_on_workers` joins an instance that is
already up instead of starting its own. The workers talk to the in-process fake server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from icpo_eval import distributed
from icpo_eval.cli import main
from icpo_eval.errors import IcpoError
from icpo_eval.records import RunSpec
from icpo_eval.runner import run
from icpo_eval.store import CONVERSATIONS, load_run
from icpo_eval.testing.fake_server import FakeServer
from tests.fake_api import api_cache, api_spec, fake_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


def _comparable(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each conversation of a run, by id, without what depends on the clock."""
    _, convs = load_run(run_dir)
    out = {}
    for c in convs:
        d = c.to_dict()
        for key in ("started_at", "finished_at"):
            d.pop(key)
        for t in d["turns"]:
            t.pop("latency_s")
        out[c.conversation_id] = d
    assert len(out) == len(convs), "a conversation written twice"
    return out


# -- no Ray needed ------------------------------------------------------------------------------
def test_concurrency_is_shared_between_workers() -> None:
    spec = RunSpec(model="openai/x", concurrency=256, workers=2)
    assert distributed.worker_spec(spec).concurrency == 128
    few = RunSpec(model="openai/x", concurrency=3, workers=4)
    assert distributed.worker_spec(few).concurrency == 1
    # Every worker gets chunks, and a chunk never holds more than one worker's share.
    assert distributed.chunk_size(spec, 1000) == 128
    assert distributed.chunk_size(spec, 10) == 3
    with pytest.raises(IcpoError, match="--workers must be at least 1"):
        RunSpec(model="openai/x", workers=0).check()


def test_workers_without_ray_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    argv = ["run", "--model", "openai/fake-a", "--api-base", "http://127.0.0.1:9/v1"]
    assert main([*argv, "--workers", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "pip install 'icpo-eval[ray]'" in err[0]
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_normal_run_never_imports_ray(tmp_path: Path) -> None:
    code = f"""
import sys
from icpo_eval.records import RunSpec
from icpo_eval.runner import run
from icpo_eval.testing.fake_server import FakeServer
with FakeServer() as server:
    spec = RunSpec(model="openai/fake-a", tasks="math", limit=2, modes=["sharded"],
                   out={str(tmp_path / "run")!r}, api_base=[server.url], cache=False)
    res = run(spec, progress=False)
assert res.written == 2, res
print("ray imported:", "ray" in sys.modules)
"""
    env = {**os.environ, "ICPO_EVAL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ray imported: False" in proc.stdout


# -- on a local Ray instance --------------------------------------------------------------------
def test_workers_give_the_records_of_one_process(
    ray_local: Any,
    fake_server: FakeServer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Same seeds, same conversations, turn for turn, on 2 workers as in one process; the
    summary names each worker's share."""
    common = dict(
        limit=4,
        modes=["full", "concat", "sharded", "recap", "snowball"],
        runs=2,
        temperature=0.7,  # the replies depend on the seeds
        cache=False,
    )
    one = api_spec(tmp_path / "one", "math", fake_server.url, **common)  # type: ignore[arg-type]
    res = run(one, progress=False)
    assert res.written == 40 and not any(c.error for c in res.conversations)

    out = tmp_path / "two" / "run"  # the same run folder name: the same run_id
    argv = ["run", "--model", "openai/fake-a", "--api-base", fake_server.url, "--tasks", "math"]
    argv += ["--limit", "4", "--modes", "full,concat,sharded,recap,snowball", "--runs", "2"]
    argv += ["--temperature", "0.7", "--no-cache", "--no-progress", "--out", str(out)]
    assert main([*argv, "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "40 conversations written" in printed
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["worker", "node"])
    table = lines[header + 1 :]
    assert len(table) == 2 and sum(int(line.split()[3]) for line in table) == 40

    assert _comparable(out) == _comparable(Path(one.out))
    spec = json.loads((out / "run.json").read_text())
    assert spec["workers"] == 2
    # A resume with the workers finds everything done (and writes nothing).
    assert main([*argv, "--workers", "2"]) == 0
    assert "0 conversations written, 40 already done" in capsys.readouterr().out


@pytest.mark.slow
def test_a_killed_worker_loses_nothing_and_doubles_nothing(
    ray_local: Any,
    api_cache: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL one worker's process mid-run: Ray restarts it, its chunks run again, and every
    conversation is in conversations.jsonl exactly once."""
    started: dict[int, int] = {}
    monkeypatch.setattr(
        distributed, "WORKER_STARTED", [lambda i, actor, info: started.setdefault(i, info["pid"])]
    )
    with FakeServer(latency=0.1) as server:
        spec = api_spec(
            tmp_path,
            "math",  # type: ignore[arg-type]
            server.url,
            limit=30,
            runs=2,
            temperature=0.7,
            concurrency=4,  # 2 per worker, chunks of 2: many chunks, a long enough run
            workers=2,
        )
        outcome: dict[str, Any] = {}

        def go() -> None:
            try:
                outcome["result"] = run(spec, progress=False)
            except BaseException as e:  # reported by the assertion below
                outcome["error"] = e

        thread = threading.Thread(target=go)
        thread.start()
        path = Path(spec.out) / CONVERSATIONS
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = path.read_text().count("\n") if path.exists() else 0
            if 0 in started and lines >= 4:
                break
            time.sleep(0.05)
        assert 0 in started, "the workers never started"
        assert lines < 60, "the run ended before the kill"
        os.kill(started[0], signal.SIGKILL)
        thread.join(120)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    ids = [json.loads(line)["conversation_id"] for line in path.read_text().splitlines()]
    assert len(ids) == 60 and len(set(ids)) == 60
    assert result.written == 60
    assert sum(w.lost_chunks for w in result.workers) >= 1
    assert not any(c.error for c in result.conversations)
