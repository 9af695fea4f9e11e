"""How an API call failed, told without its secrets: which failures are retried, which stop
the run, and the one line that describes them (used by :mod:`icpo_eval.models.api`).

API keys come from the environment; an error message may quote a request's headers or the key
itself, so every description goes through :func:`redact`.
"""

from __future__ import annotations

import asyncio
import os
import re

#: HTTP statuses worth a retry besides 5xx.
RETRY_STATUS = frozenset({408, 409, 429})
#: Status codes no retry can fix: the run stops instead of failing every conversation.
FATAL_STATUS = frozenset({401, 403, 404})


# -- secrets ------------------------------------------------------------------------------------
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASS)$|_KEY_", re.I)


def redact(text: str) -> str:
    """``text`` with the value of every secret-looking environment variable replaced by ***."""
    for name, value in os.environ.items():
        if len(value) >= 6 and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, "***")
    # Bearer tokens and sk-... keys that did not come from the environment.
    text = re.sub(r"(Bearer\s+)\S+", r"\1***", text)
    return re.sub(r"\bsk-[A-Za-z0-9_\-]{6,}", "sk-***", text)


# -- errors -------------------------------------------------------------------------------------
class HttpError(Exception):
    """A non-2xx reply of the direct transport, with its status code (as litellm's errors)."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status_code = status


def status_of(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def is_retryable(exc: BaseException) -> bool:
    """429, 5xx, timeouts and connection errors (litellm's classes or plain HTTP ones)."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, ConnectionError)):
        return True
    try:
        import aiohttp

        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            return True
    except ImportError:  # pragma: no cover
        pass
    name = type(exc).__name__
    if name in (
        "RateLimitError",
        "InternalServerError",
        "ServiceUnavailableError",
        "BadGatewayError",
        "Timeout",
        "APITimeoutError",
        "APIConnectionError",
    ):
        return True
    code = status_of(exc)
    return code is not None and (code in RETRY_STATUS or code >= 500)


def is_fatal(exc: BaseException) -> bool:
    """Errors no retry can fix (bad key, no such model): the run stops with one line."""
    if type(exc).__name__ in ("AuthenticationError", "PermissionDeniedError", "NotFoundError"):
        return True
    return status_of(exc) in FATAL_STATUS


def describe(exc: BaseException) -> str:
    """One line naming the error, secrets redacted."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return redact(f"{type(exc).__name__}: {msg}"[:500])
