"""Fixtures and helpers for tests against the local OpenAI-compatible server.

Import the fixtures a test module needs (``from tests.fake_api import api_cache, fake_server``).
Every test gets its own response cache (``ICPO_EVAL_CACHE`` under ``tmp_path``), so that a
cache left by an earlier test or by the user never answers for the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from icpo_eval.records import RunSpec
from icpo_eval.tasksets import write_jsonl
from icpo_eval.testing.fake_server import FakeServer
from tests.conftest import make_math


@pytest.fixture
def api_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ICPO_EVAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "responses.sqlite"


@pytest.fixture
def fake_server(api_cache: Path) -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


@pytest.fixture
def tasks_file(tmp_path: Path) -> Path:
    """Two math instructions: t1 (3 + 5 = 8, which the fake assistant's sum gets right) and
    t2 (reference 9, which it gets wrong)."""
    path = tmp_path / "tasks.jsonl"
    write_jsonl([make_math("t1"), make_math("t2", answer="9")], path)
    return path


def api_spec(tmp_path: Path, tasks: Path, url: str | list[str], **kw: object) -> RunSpec:
    """A run against the fake server with tiny timeouts and backoff (tests must be quick)."""
    base: dict[str, object] = dict(
        model="openai/fake-a",
        tasks=str(tasks),
        modes=["sharded"],
        out=str(tmp_path / "run"),
        api_base=[url] if isinstance(url, str) else list(url),
        concurrency=8,
        timeout=5.0,
        max_attempts=4,
        retry_wait=0.01,
    )
    base.update(kw)
    return RunSpec(**base)  # type: ignore[arg-type]
