"""An asyncio event loop running forever in a daemon thread, for synchronous callers.

The API backend runs every call on one such loop (:func:`icpo_eval.models.api.run_sync`); the
test server (:mod:`icpo_eval.testing.fake_server`) serves on one. Both stop it the same way:
a last cleanup on the loop, every task still pending there cancelled and awaited (a task
destroyed pending at exit warns), then the loop is stopped, its thread joined and the loop
closed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    """A new event loop, run forever by a daemon thread named ``name`` (started at once)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (from any other thread); if the
        wait ends early (timeout, interrupt), the coroutine is cancelled."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                f"a blocking call on {self.thread.name!r} from that loop itself (would deadlock)"
            )
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()
            raise

    def stop(
        self, cleanup: Callable[[], Awaitable[None]] | None = None, timeout: float = 5.0
    ) -> None:
        """Await ``cleanup()`` on the loop, cancel and await every other pending task there,
        stop the loop and join its thread (each wait at most ``timeout`` s); close the loop
        if the thread ended. Errors on the way are swallowed: this runs at exit."""
        if not self.thread.is_alive():
            return

        async def last() -> None:
            if cleanup is not None:
                await cleanup()
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(last(), self.loop).result(timeout=timeout)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=timeout)
        if not self.thread.is_alive():
            self.loop.close()
