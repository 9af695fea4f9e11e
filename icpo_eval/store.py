"""Append-only, crash-safe storage of a run: ``run.json`` and ``conversations.jsonl``.

Why this shape: a run can be killed at any moment (SIGKILL, power loss, a full disk). Each
finished conversation is written as one JSON line, flushed and fsynced before the next one, by one
writer holding a lock. On reopening, a torn last line (a write cut short) is dropped with a
warning and truncated away, so the file is again a sequence of complete lines; every complete line
is a finished conversation that a resumed run skips.

**One writer per run folder.** :meth:`RunStore.open` takes an exclusive ``flock`` on
``.lock`` in the folder and writes its pid there; a second process that opens the same folder
(two terminals, a requeued cluster job) is refused with one line naming the holder's pid, so
no conversation is ever written twice. The kernel releases the lock when the holder exits,
however it exits (``kill -9`` included), so a killed run never leaves the folder stuck: the next
``icpo-eval run`` takes the lock and resumes. :meth:`RunStore.close` releases it.

Only a regular file is read or appended to: ``conversations.jsonl`` and ``run.json`` are opened
with ``O_NOFOLLOW`` (and without blocking), and a symlink, FIFO, device or socket in their place
is one :class:`~icpo_eval.errors.IcpoError`, never a write elsewhere or a frozen run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.records import Conversation, RunSpec

CONVERSATIONS = "conversations.jsonl"
RUN_JSON = "run.json"
LOCK = ".lock"


def _open_regular(path: Path, flags: int) -> int:
    """Open ``path`` as a regular file, never through a symlink (``O_NOFOLLOW``) and never
    blocking on a FIFO (``O_NONBLOCK``, cleared once it is known to be a regular file): a
    FIFO, socket, device or symlink put in place of the run's file is one IcpoError."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            raise IcpoError(f"{path}: is a symlink; refusing to follow it") from None
        if e.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            raise IcpoError(f"{path}: not a regular file (a FIFO); refusing it") from None
        raise IcpoError(f"{path}: cannot open ({e.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = (
                "a FIFO" if stat.S_ISFIFO(mode)
                else "a directory" if stat.S_ISDIR(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode)
                else "not a file"
            )  # fmt: skip
            raise IcpoError(f"{path}: not a regular file ({kind}); refusing it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_not_special(path: Path) -> None:
    """Refuse a symlink or any non-regular file at ``path`` (a missing one is fine)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise IcpoError(f"{path}: is a symlink; refusing to follow it")
    if not stat.S_ISREG(st.st_mode):
        os.close(_open_regular(path, os.O_RDONLY))  # raises, naming the kind


def read_conversations(path: Path, repair: bool = False) -> list[Conversation]:
    """Read every complete line of a conversations file.

    A last line without its newline was torn by a crash: it is dropped with a warning, and with
    ``repair=True`` cut off the file so that appending can continue cleanly. A malformed line
    elsewhere is corruption that icpo-eval did not cause, and is an error.
    """
    if not os.path.lexists(path):
        return []
    with os.fdopen(_open_regular(path, os.O_RDONLY), "rb") as f:
        data = f.read()
    good_end = len(data)
    if data and not data.endswith(b"\n"):
        good_end = data.rfind(b"\n") + 1
        print(
            f"warning: {path}: dropped a torn last line ({len(data) - good_end} bytes) "
            "left by an interrupted run",
            file=sys.stderr,
        )
        if repair:
            with os.fdopen(_open_regular(path, os.O_RDWR), "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
    out = []
    for lineno, line in enumerate(data[:good_end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Conversation.from_dict(json.loads(line)))
        except (ValueError, TypeError, RecursionError, KeyError, AttributeError) as e:
            msg = f"{type(e).__name__}: {e}"[:200]
            raise IcpoError(f"{path}:{lineno}: not a conversation record ({msg})") from None
    return out


class RunStore:
    """One run directory. Use :meth:`open` to create or resume it."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.path = directory / CONVERSATIONS
        self._lock = threading.Lock()
        self._fh: Any = None
        self._folder_lock: int | None = None  # the fd holding the run folder's flock

    def _take_folder_lock(self) -> None:
        """The run folder's exclusive lock, or one IcpoError naming the process that holds it."""
        path = self.dir / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise IcpoError(f"{path}: cannot open the run folder's lock ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise IcpoError(
                f"{self.dir} is being written by another icpo-eval run (pid {holder}); wait for "
                "it to finish, or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._folder_lock = fd

    @classmethod
    def open(cls, directory: str | Path, spec: RunSpec) -> tuple[RunStore, set[str]]:
        """Create the run directory or resume it; return the store and the finished ids.

        A resume whose spec differs in a field that changes what is generated is refused, so one
        file never mixes two settings.
        """
        store = cls(Path(directory))
        store.dir.mkdir(parents=True, exist_ok=True)
        store._take_folder_lock()
        try:
            return store, store._open_locked(spec)
        except BaseException:
            store.close()
            raise

    def _open_locked(self, spec: RunSpec) -> set[str]:
        """:meth:`open`, once the folder's lock is held: the spec checked and written, the
        finished ids read."""
        store = self
        _check_not_special(store.path)
        run_json = store.dir / RUN_JSON
        if os.path.lexists(run_json):
            try:
                old = RunSpec.from_dict(json.loads(_read_text(run_json)))
            except (ValueError, TypeError, RecursionError) as e:
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
        return {c.conversation_id for c in read_conversations(store.path, repair=True)}

    def append(self, conv: Conversation) -> None:
        """Write one finished conversation durably (one line, flushed and fsynced)."""
        line = json.dumps(conv.to_dict(), ensure_ascii=False) + "\n"
        with self._lock:
            if self._fh is None:
                fd = _open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                self._fh = os.fdopen(fd, "a", encoding="utf-8")
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the conversations file and release the run folder's lock."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            if self._folder_lock is not None:
                os.close(self._folder_lock)  # closing the fd releases the flock
                self._folder_lock = None

    def __iter__(self) -> Iterator[Conversation]:
        return iter(read_conversations(self.path))


def load_run(directory: str | Path) -> tuple[RunSpec | None, list[Conversation]]:
    """Read a run directory (spec may be None for a bare conversations file)."""
    d = Path(directory)
    if not os.path.lexists(d / CONVERSATIONS):
        raise IcpoError(f"{d}: no {CONVERSATIONS} here")
    spec = None
    if os.path.lexists(d / RUN_JSON):
        try:
            spec = RunSpec.from_dict(json.loads(_read_text(d / RUN_JSON)))
        except (ValueError, TypeError, RecursionError) as e:
            raise IcpoError(f"{d / RUN_JSON}: unreadable run spec ({e})") from None
    return spec, read_conversations(d / CONVERSATIONS)


def _read_text(path: Path) -> str:
    """A regular file's text (:func:`_open_regular`: no symlink, FIFO or device)."""
    with os.fdopen(_open_regular(path, os.O_RDONLY), "rb") as f:
        return f.read().decode("utf-8", "replace")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        os.unlink(tmp)  # a leftover, or something put there: never written through
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
