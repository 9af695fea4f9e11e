"""Append-only, crash-safe storage of a run: ``run.json`` and ``conversations.jsonl``.

Why this shape: a run can be killed at any moment (SIGKILL, power loss, a full disk). Each
finished conversation is written as one JSON line, flushed and fsynced before the next one, by one
writer holding a lock. On reopening, a torn last line (a write cut short) is dropped with a
warning and truncated away, so the file is again a sequence of complete lines; every complete line
is a finished conversation that a resumed run skips.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.records import Conversation, RunSpec

CONVERSATIONS = "conversations.jsonl"
RUN_JSON = "run.json"


def read_conversations(path: Path, repair: bool = False) -> list[Conversation]:
    """Read every complete line of a conversations file.

    A last line without its newline was torn by a crash: it is dropped with a warning, and with
    ``repair=True`` cut off the file so that appending can continue cleanly. A malformed line
    elsewhere is corruption that icpo-eval did not cause, and is an error.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    good_end = len(data)
    if data and not data.endswith(b"\n"):
        good_end = data.rfind(b"\n") + 1
        print(
            f"warning: {path}: dropped a torn last line ({len(data) - good_end} bytes) "
            "left by an interrupted run",
            file=sys.stderr,
        )
        if repair:
            with open(path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
    out = []
    for lineno, line in enumerate(data[:good_end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Conversation.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError) as e:
            raise IcpoError(f"{path}:{lineno}: not a conversation record ({e})") from None
    return out


class RunStore:
    """One run directory. Use :meth:`open` to create or resume it."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.path = directory / CONVERSATIONS
        self._lock = threading.Lock()
        self._fh: Any = None

    @classmethod
    def open(cls, directory: str | Path, spec: RunSpec) -> tuple[RunStore, set[str]]:
        """Create the run directory or resume it; return the store and the finished ids.

        A resume whose spec differs in a field that changes what is generated is refused, so one
        file never mixes two settings.
        """
        store = cls(Path(directory))
        store.dir.mkdir(parents=True, exist_ok=True)
        run_json = store.dir / RUN_JSON
        if run_json.exists():
            try:
                old = RunSpec.from_dict(json.loads(run_json.read_text()))
            except (json.JSONDecodeError, TypeError) as e:
                raise IcpoError(f"{run_json}: unreadable run spec ({e})") from None
            diffs = [
                f"{k}: {getattr(old, k)!r} -> {getattr(spec, k)!r}"
                for k in RunSpec.IDENTITY_FIELDS
                if getattr(old, k) != getattr(spec, k)
            ]
            if diffs:
                raise IcpoError(
                    f"{store.dir} holds a run with other settings ({'; '.join(diffs)}); "
                    "use another --out"
                )
        _atomic_write(run_json, json.dumps(spec.to_dict(), indent=2) + "\n")
        done = {c.conversation_id for c in read_conversations(store.path, repair=True)}
        return store, done

    def append(self, conv: Conversation) -> None:
        """Write one finished conversation durably (one line, flushed and fsynced)."""
        line = json.dumps(conv.to_dict(), ensure_ascii=False) + "\n"
        with self._lock:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __iter__(self) -> Iterator[Conversation]:
        return iter(read_conversations(self.path))


def load_run(directory: str | Path) -> tuple[RunSpec | None, list[Conversation]]:
    """Read a run directory (spec may be None for a bare conversations file)."""
    d = Path(directory)
    if not (d / CONVERSATIONS).exists():
        raise IcpoError(f"{d}: no {CONVERSATIONS} here")
    spec = None
    if (d / RUN_JSON).exists():
        try:
            spec = RunSpec.from_dict(json.loads((d / RUN_JSON).read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise IcpoError(f"{d / RUN_JSON}: unreadable run spec ({e})") from None
    return spec, read_conversations(d / CONVERSATIONS)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
