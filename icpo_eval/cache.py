"""Response cache for API calls: one SQLite file in WAL mode, safe across processes.

Why a cache: re-running or resuming an evaluation should not pay twice for the same reply, and a
crashed run should pick up where it stopped at no cost.

What the key holds, and why (after inspect_ai's ``model/_cache.py``): everything that decides the
reply and nothing that only decides how it travels.

- ``model`` and ``api_base``: two models never share answers; the base is part of the key
  because ``openai/x`` at two addresses may be two different servers. For a fleet of replicas
  the sorted list of bases is the key (any replica answers for the fleet).
- ``role`` (``assistant``, ``simulator`` or ``judge``): the same messages sent in different roles
  are different questions.
- ``messages`` and the generation parameters (temperature, top_p, max tokens).
- ``sample``: the sampling seed of the request. Each run of one instruction has its own seed, so
  the N runs of an instruction are N requests, never N copies of one cached reply.

Left out: timeouts, retries, concurrency, API keys. A key is the SHA-256 of the canonical JSON
(sorted keys, no whitespace) of those fields; the value is the reply as JSON. API keys are
never part of what is stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from icpo_eval.paths import cache_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    role TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
)
"""


def default_cache_path() -> Path:
    return cache_dir() / "responses.sqlite"


def cache_key(
    model: str,
    api_base: str | list[str] | None,
    role: str,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    sample: int,
) -> str:
    """SHA-256 of the canonical JSON of everything that decides a reply (see module doc)."""
    if isinstance(api_base, list):
        base: str | list[str] | None = sorted(api_base) if len(api_base) > 1 else api_base[0]
    else:
        base = api_base
    payload = {
        "model": model,
        "api_base": base,
        "role": role,
        "messages": messages,
        "params": params,
        "sample": sample,
    }
    canon = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


class ResponseCache:
    """Key → JSON value store. Thread-safe; several processes may share one file (WAL)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection shared by the threads of this process, serialised by the lock; other
        # processes open their own. WAL lets readers and one writer work at the same time, and
        # busy_timeout makes a writer wait for another process's write instead of failing.
        self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute(SCHEMA)
            self._db.commit()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, model: str, role: str, value: dict[str, Any]) -> None:
        text = json.dumps(value, ensure_ascii=False)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, model, role, value) VALUES (?, ?, ?, ?)",
                (key, model, role, text),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
