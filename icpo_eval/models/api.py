"""API backend: any model string that is not ``local/`` or ``hf/``, through litellm.

``openai/gpt-4o-mini``, ``hosted_vllm/<id>`` with ``--api-base``, ``ollama_chat/<id>``,
``azure/<deployment>`` ...: litellm speaks every provider's protocol. Everything here is
async and runs on one event loop in a background thread (:func:`run_sync`), so that

- the runner's streaming protocol works unchanged: :meth:`ApiBackend.stream` starts every
  conversation at once, and each conversation's next turn is sent the moment its reply is
  judged; at most ``concurrency`` requests are in flight (an ``asyncio.Semaphore``);
- the LLM user simulator and the LLM judge, which the conversation loop calls synchronously,
  can block their worker thread on a call scheduled on the same loop
  (:meth:`ApiClient.complete`); the judging of one conversation never stalls the others.

Reliability: every call is retried with tenacity, exponential backoff with full jitter, on 429,
5xx, timeouts and connection errors (``max_attempts`` in all). A call that still fails raises
:class:`~icpo_eval.models.base.CallFailed`, which fails that conversation only. Errors that no
retry can fix (bad key, unknown model) stop the run with one line.

Several ``--api-base`` URLs (replicas of one model) share the load: litellm's ``Router``, with
its own retries and cooldowns switched off (tenacity retries; a replica that had one 429 stays
in the rotation).

Transport: litellm costs about 4-5 ms of CPU per call in Python (request building, logging,
cost lookup). For a self-hosted fleet that ceiling matters: one process tops out near 200
requests per second. ``hosted_vllm/`` models with an explicit ``--api-base`` therefore speak the
OpenAI chat protocol directly over aiohttp (``transport="direct"``, about 0.2 ms a call) unless
``transport="litellm"`` is asked for; every other model goes through litellm. Both transports
share the retries, the cache, the concurrency limit and the token accounting.

Secrets: API keys come from the environment only (litellm reads the provider's variable; the
direct transport reads ``HOSTED_VLLM_API_KEY`` / ``OPENAI_API_KEY``). They are never part of a
cache key, a record or a log line: error messages are passed through
:func:`~icpo_eval.models.api_errors.redact`.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from icpo_eval.aio import BackgroundLoop
from icpo_eval.cache import ResponseCache, cache_key
from icpo_eval.errors import IcpoError
from icpo_eval.models.api_errors import HttpError, describe, is_fatal, is_retryable
from icpo_eval.models.base import CallFailed, Generation, GenParams, Messages, Request

__all__ = ["ApiBackend", "ApiClient", "ApiSettings", "run_sync"]

T = TypeVar("T")

TRANSPORTS = ("auto", "litellm", "direct")
#: Providers that speak the OpenAI chat protocol at ``<api_base>/chat/completions``.
OPENAI_COMPATIBLE = ("hosted_vllm", "openai")


@dataclass
class ApiSettings:
    """How API calls travel. None of this changes a reply, so none of it is in the cache key."""

    api_bases: list[str] = field(default_factory=list)
    concurrency: int = 8
    cache: bool = True
    cache_path: str | None = None  # None: the user cache directory
    timeout: float = 120.0  # seconds per attempt
    max_attempts: int = 6
    #: Backoff unit in seconds: attempt n waits a random time in [0, min(60, retry_wait * 2^n)].
    retry_wait: float = 1.0
    transport: str = "auto"


# -- the event loop all API calls run on --------------------------------------------------------
_LOOP: BackgroundLoop | None = None
_LOOP_LOCK = threading.Lock()
_CLOSERS: list[Callable[[], Awaitable[None]]] = []


def _loop() -> BackgroundLoop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = BackgroundLoop("icpo-api-loop")
            atexit.register(_shutdown)
        return _LOOP


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the shared API loop and wait for it (from any other thread)."""
    return _loop().run(coro)


def _shutdown() -> None:
    """Close every HTTP session on the loop that owns it, then stop the loop (at exit)."""
    if _LOOP is None:
        return

    async def close_all() -> None:
        for close in _CLOSERS:
            try:
                await close()
            except Exception:
                pass

    # Tasks a timed-out call left behind are cancelled too (BackgroundLoop.stop).
    _LOOP.stop(close_all, timeout=5)


_LITELLM_READY = False


def missing_credentials(model: str) -> list[str]:
    """The environment variables holding a key or token that litellm says ``model``'s provider
    needs and that are not set (``["OPENAI_API_KEY"]``); empty when nothing is missing or
    litellm cannot tell. Variables naming a server (``OLLAMA_API_BASE``) are not credentials:
    such providers have a default address."""
    try:
        found = _litellm().validate_environment(model)
    except Exception:  # an unknown provider: litellm will say so on the first call
        return []
    missing = found.get("missing_keys") if isinstance(found, dict) else None
    return [k for k in missing or [] if isinstance(k, str) and ("KEY" in k or "TOKEN" in k)]


def _litellm() -> Any:
    """Import litellm once, quietly and offline. Our exit hook is registered after litellm's
    own, so it runs first (atexit is last-in first-out) and closes litellm's sessions on the
    loop they belong to; litellm's hook then finds nothing left to close."""
    global _LITELLM_READY
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the price map
    import litellm

    if not _LITELLM_READY:
        litellm.suppress_debug_info = True
        litellm.telemetry = False

        async def close_litellm() -> None:
            from litellm.llms.custom_httpx.async_client_cleanup import (
                close_litellm_async_clients,
            )

            await close_litellm_async_clients()

        _CLOSERS.append(close_litellm)
        atexit.register(_shutdown)
        _LITELLM_READY = True
    return litellm


# -- the client ---------------------------------------------------------------------------------
def provider_of(model: str) -> str:
    return model.split("/", 1)[0] if "/" in model else ""


def _key_for(model: str) -> str | None:
    """The API key the direct transport sends (environment only)."""
    names = ["HOSTED_VLLM_API_KEY", "OPENAI_API_KEY"]
    if provider_of(model) == "openai":
        names.reverse()
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


class ApiClient:
    """One model behind an API: async, bounded, retried and cached calls."""

    def __init__(
        self, model: str, settings: ApiSettings | None = None, cache: ResponseCache | None = None
    ):
        self.model = model
        self.settings = settings or ApiSettings()
        s = self.settings
        if s.transport not in TRANSPORTS:
            raise IcpoError(f"unknown transport {s.transport!r} (known: {', '.join(TRANSPORTS)})")
        self.bases = [b.rstrip("/") for b in s.api_bases]
        if s.transport == "direct" and (
            not self.bases or provider_of(model) not in OPENAI_COMPATIBLE
        ):
            raise IcpoError(
                "--transport direct needs an OpenAI-compatible model (hosted_vllm/… or openai/…) "
                "and --api-base"
            )
        auto_direct = provider_of(model) == "hosted_vllm" and bool(self.bases)
        self.transport = (
            "direct"
            if s.transport == "direct" or (s.transport == "auto" and auto_direct)
            else "litellm"
        )
        if self.transport == "litellm" and provider_of(model) not in _litellm().provider_list:
            raise IcpoError(
                f"unknown provider {provider_of(model)!r} in {model!r} (litellm providers: "
                "openai, hosted_vllm, ollama_chat, azure, anthropic, ...)"
            )
        if cache is None and s.cache:
            cache = ResponseCache(s.cache_path)
        self.cache = cache if s.cache else None
        self.requests_sent = 0  # attempts that went out on the wire (for tests and benchmarks)
        self._sem: asyncio.Semaphore | None = None
        self._router: Any = None
        self._session: Any = None
        self._next_base = 0
        # Prices come from litellm's table. A self-hosted model has none; for any other model
        # on the direct transport litellm is imported here, before the event loop runs, since
        # importing it (about 2 s) on the loop at the first reply would hold up every call.
        self._cost_known: bool | None = False if provider_of(model) == "hosted_vllm" else None
        if self.transport == "direct" and self._cost_known is None:
            _litellm()

    # -- public ---------------------------------------------------------------------------
    def complete(
        self, messages: Messages, params: GenParams, role: str, sample: int = 0
    ) -> Generation:
        """Blocking call for code outside the event loop (the LLM simulator and judge)."""
        return run_sync(self.acomplete(messages, params, role, sample))

    async def acomplete(
        self, messages: Messages, params: GenParams, role: str, sample: int = 0
    ) -> Generation:
        """One reply; raises :class:`CallFailed` when retries are exhausted, IcpoError when
        no retry can help (bad key, unknown model)."""
        t0 = time.perf_counter()
        key = None
        if self.cache is not None:
            key = cache_key(
                self.model, self.bases or None, role, messages, _params_dict(params), sample
            )
            hit = self.cache.get(key)
            if hit is not None:
                return Generation(
                    text=hit["text"],
                    tokens_in=hit.get("tokens_in"),
                    tokens_out=hit.get("tokens_out"),
                    truncated=bool(hit.get("truncated")),
                    latency_s=time.perf_counter() - t0,
                    cost=hit.get("cost"),
                )
        gen = await self._with_retries(messages, params, sample)
        gen.latency_s = time.perf_counter() - t0
        if self.cache is not None and key is not None:
            self.cache.put(
                key,
                self.model,
                role,
                {
                    "text": gen.text,
                    "tokens_in": gen.tokens_in,
                    "tokens_out": gen.tokens_out,
                    "truncated": gen.truncated,
                    "cost": gen.cost,
                },
            )
        return gen

    # -- internals ------------------------------------------------------------------------
    async def _with_retries(self, messages: Messages, params: GenParams, sample: int) -> Generation:
        from tenacity import (
            AsyncRetrying,
            RetryError,
            retry_if_exception,
            stop_after_attempt,
            wait_random_exponential,
        )

        s = self.settings
        if self._sem is None:
            self._sem = asyncio.Semaphore(max(1, s.concurrency))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, s.max_attempts)),
            wait=wait_random_exponential(multiplier=s.retry_wait, max=60 * max(s.retry_wait, 1)),
            retry=retry_if_exception(is_retryable),
            reraise=False,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with self._sem:
                        self.requests_sent += 1
                        return await self._call(messages, params, sample)
        except RetryError as e:
            last = e.last_attempt.exception()
            assert last is not None
            raise CallFailed(
                f"{self.model}: {describe(last)} (after {s.max_attempts} attempts)"
            ) from None
        except (CallFailed, IcpoError, asyncio.CancelledError):
            raise
        except Exception as e:
            if is_fatal(e):
                raise IcpoError(f"{self.model}: {describe(e)}") from None
            raise CallFailed(f"{self.model}: {describe(e)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(self, messages: Messages, params: GenParams, sample: int) -> Generation:
        if self.transport == "direct":
            return await self._call_direct(messages, params, sample)
        return await self._call_litellm(messages, params, sample)

    async def _call_litellm(self, messages: Messages, params: GenParams, sample: int) -> Generation:
        litellm = _litellm()
        kwargs: dict[str, Any] = {
            "messages": messages,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "seed": sample,
            "timeout": self.settings.timeout,
            "drop_params": True,
        }
        key = self._placeholder_key()
        if len(self.bases) > 1:
            resp = await self._litellm_router(key).acompletion(model=self.model, **kwargs)
        else:
            if self.bases:
                kwargs["api_base"] = self.bases[0]
            if key is not None:
                kwargs["api_key"] = key
            resp = await litellm.acompletion(model=self.model, max_retries=0, **kwargs)
        choice = resp.choices[0]
        usage = getattr(resp, "usage", None)
        hidden = getattr(resp, "_hidden_params", None) or {}
        cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
        if not isinstance(cost, (int, float)) or (cost == 0 and not self._litellm_knows_price()):
            cost = None  # litellm prices a model it has no price for at 0: that is unknown
        return Generation(
            text=choice.message.content or "",
            tokens_in=getattr(usage, "prompt_tokens", None),
            tokens_out=getattr(usage, "completion_tokens", None),
            truncated=choice.finish_reason == "length",
            cost=float(cost) if isinstance(cost, (int, float)) else None,
        )

    def _litellm_knows_price(self) -> bool:
        if self._cost_known is None:
            table = _litellm().model_cost
            info = table.get(self.model) or table.get(self.model.split("/", 1)[-1]) or {}
            self._cost_known = info.get("input_cost_per_token") is not None
        return self._cost_known

    def _placeholder_key(self) -> str | None:
        """A self-hosted OpenAI-compatible server often needs no key, but the openai client
        refuses to start without one: send a placeholder then (never a real secret)."""
        if self.bases and provider_of(self.model) in OPENAI_COMPATIBLE and _key_for(self.model):
            return None
        if self.bases and provider_of(self.model) in OPENAI_COMPATIBLE:
            return "EMPTY"
        return None

    def _litellm_router(self, key: str | None) -> Any:
        if self._router is None:
            litellm = _litellm()
            deployments = []
            for base in self.bases:
                lp: dict[str, Any] = {"model": self.model, "api_base": base, "max_retries": 0}
                if key is not None:
                    lp["api_key"] = key
                deployments.append({"model_name": self.model, "litellm_params": lp})
            self._router = litellm.Router(
                model_list=deployments,
                num_retries=0,
                disable_cooldowns=True,
                timeout=self.settings.timeout,
            )
        return self._router

    async def _call_direct(self, messages: Messages, params: GenParams, sample: int) -> Generation:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), trust_env=False
            )
            session = self._session

            async def close() -> None:
                await session.close()

            _CLOSERS.append(close)
        # Least-recently-used replica: round robin over the bases.
        base = self.bases[self._next_base % len(self.bases)]
        self._next_base += 1
        body = {
            "model": self.model.split("/", 1)[1],
            "messages": messages,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "seed": sample,
        }
        headers = {"Content-Type": "application/json"}
        key = _key_for(self.model)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        async with self._session.post(
            f"{base}/chat/completions", data=json.dumps(body), headers=headers, timeout=timeout
        ) as r:
            text = await r.text()
            if r.status != 200:
                raise HttpError(r.status, text)
        data = json.loads(text)
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return Generation(
            text=(choice.get("message") or {}).get("content") or "",
            tokens_in=usage.get("prompt_tokens"),
            tokens_out=usage.get("completion_tokens"),
            truncated=choice.get("finish_reason") == "length",
            cost=self._price(usage),
        )

    def _price(self, usage: dict[str, Any]) -> float | None:
        """Cost from litellm's price table; None for a model it does not know (self-hosted)."""
        if self._cost_known is False:
            return None
        try:
            litellm = _litellm()
            pin, pout = litellm.cost_per_token(
                model=self.model,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
            self._cost_known = True
            return float(pin + pout)
        except Exception:
            self._cost_known = False
            return None


def _params_dict(params: GenParams) -> dict[str, Any]:
    return {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_new_tokens,
    }


class ApiBackend:
    """The runner's view of an API model: streaming, every conversation advancing on its own."""

    def __init__(
        self, model: str, settings: ApiSettings | None = None, cache: ResponseCache | None = None
    ):
        self.name = model
        self.settings = settings or ApiSettings()
        self.client = ApiClient(model, self.settings, cache)

    def generate(
        self, requests: list[Messages], params: GenParams, seeds: list[int]
    ) -> list[Generation]:
        async def all_of() -> list[Generation]:
            return list(
                await asyncio.gather(*(self._one(m, params, s) for m, s in zip(requests, seeds)))
            )

        return run_sync(all_of())

    def stream(
        self,
        requests: list[Request],
        params: GenParams,
        on_result: Callable[[Any, Generation], Request | None],
    ) -> None:
        """Run every conversation to its end. ``on_result`` (judging, the simulator, writing
        the record) runs in a worker thread, so that an LLM judge or simulator waiting on its
        own API call never blocks the event loop."""
        run_sync(self._stream(requests, params, on_result))

    def admitted(self) -> int:
        """How many conversations :meth:`stream` keeps in flight at once (see there)."""
        return max(2, 2 * self.settings.concurrency)

    async def _one(self, messages: Messages, params: GenParams, seed: int) -> Generation:
        try:
            return await self.client.acomplete(messages, params, "assistant", seed)
        except CallFailed as e:
            return Generation(text="", error=str(e))

    async def _stream(
        self,
        requests: list[Request],
        params: GenParams,
        on_result: Callable[[Any, Generation], Request | None],
    ) -> None:
        loop = asyncio.get_running_loop()
        # A callback may wait on two calls of its own (judge, then simulator), each role
        # bounded by its own ``concurrency``: more threads than that would only queue.
        workers = min(256, 2 * self.settings.concurrency + 4)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="icpo-judge")

        # Started conversations first: at most ``admitted`` conversations are in flight, and a
        # new one starts only when one finishes, so a conversation's next turn never queues
        # behind the first turns of conversations not yet started. Results then arrive steadily,
        # and an interrupt or a crash loses at most the conversations in flight. Twice the
        # model's concurrency keeps its slots full while half the admitted conversations wait on
        # their judge or simulator.
        admitted = asyncio.Semaphore(self.admitted())

        async def chain(req: Request | None) -> None:
            async with admitted:  # waiters are woken in order: conversations start in order
                while req is not None:
                    key, messages, seed = req
                    gen = await self._one(messages, params, seed)
                    req = await loop.run_in_executor(pool, on_result, key, gen)

        tasks = [asyncio.create_task(chain(r)) for r in requests]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
