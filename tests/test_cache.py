"""The response cache: what its key holds, and sharing one file across processes."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

from icpo_eval.cache import ResponseCache, cache_key

MSGS = [{"role": "user", "content": "hi"}]
PARAMS = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 10}


def key(**kw):
    base = dict(
        model="openai/a", api_base="http://x/v1", role="assistant", messages=MSGS,
        params=PARAMS, sample=0,
    )  # fmt: skip
    base.update(kw)
    return cache_key(**base)


def test_key_holds_what_decides_a_reply():
    k = key()
    assert key() == k
    assert key(model="openai/b") != k
    assert key(api_base="http://y/v1") != k
    assert key(role="judge") != k and key(role="simulator") != k
    assert key(messages=[{"role": "user", "content": "hi!"}]) != k
    assert key(params={**PARAMS, "temperature": 0.5}) != k
    assert key(sample=1) != k
    # The replicas of a fleet are one key, whatever their order.
    assert key(api_base=["http://b/v1", "http://a/v1"]) == key(
        api_base=["http://a/v1", "http://b/v1"]
    )
    # Dict key order does not matter (canonical JSON).
    assert key(params=dict(reversed(list(PARAMS.items())))) == k


def test_roundtrip_and_wal(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    assert cache.get("k") is None
    cache.put("k", "m", "assistant", {"text": "héllo", "cost": None})
    assert cache.get("k") == {"text": "héllo", "cost": None}
    assert (cache.hits, cache.misses) == (1, 1)
    mode = sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def _writer(path: str, prefix: str, n: int) -> None:
    cache = ResponseCache(path)
    for i in range(n):
        cache.put(f"{prefix}{i}", "m", "assistant", {"text": f"{prefix}{i}"})
        cache.get(f"{prefix}{i}")


def test_several_processes_share_one_file(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ResponseCache(path)  # create the schema once
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, p, 40)) for p in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = ResponseCache(path)
    assert len(cache) == 120 and cache.get("b39") == {"text": "b39"}
