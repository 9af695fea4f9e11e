"""What every model backend offers the runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class GenParams:
    """Generation settings shared by every request of a run."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256


@dataclass
class Generation:
    text: str
    tokens_in: int | None = None
    tokens_out: int | None = None
    #: The reply was cut by ``max_new_tokens`` before the model ended it.
    truncated: bool = False
    latency_s: float | None = None
    cost: float | None = None
    #: Set when the request finally failed (retries exhausted): the conversation is recorded
    #: as failed with this message and left out of the scores. ``text`` is then empty.
    error: str | None = None
    #: The token ids the model sampled, its stop token included when it stopped (local
    #: backends only; the conversation trainer compares them with what it trains on).
    ids: list[int] | None = None


class CallFailed(Exception):
    """An API call that failed for good (retries exhausted or a non-retryable error).

    Raised by API clients to the simulator and the judge; the conversation loop turns it into a
    failed conversation, and the other conversations go on.
    """


class Backend(Protocol):
    """A model that answers many chats at once.

    ``generate`` receives every live conversation of the current turn and returns one
    :class:`Generation` per request, in order. ``seeds`` makes sampling reproducible per request,
    independently of how requests are grouped.
    """

    name: str

    def generate(
        self, requests: list[Messages], params: GenParams, seeds: list[int]
    ) -> list[Generation]: ...


#: A streaming request: (caller's key, messages, sampling seed).
Request = tuple[Any, Messages, int]


@runtime_checkable
class StreamingBackend(Protocol):
    """A backend that schedules requests itself (continuous batching).

    ``stream`` answers ``requests`` and calls ``on_result(key, generation)`` as each one ends;
    a request returned by the callback (a conversation's next turn) is scheduled too.
    """

    name: str

    def stream(
        self,
        requests: list[Request],
        params: GenParams,
        on_result: Callable[[Any, Generation], Request | None],
    ) -> None: ...
