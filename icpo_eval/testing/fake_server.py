"""A local OpenAI-compatible chat server for tests and benchmarks (127.0.0.1 only).

It answers ``POST /v1/chat/completions`` (and ``/chat/completions``) deterministically, as a
function of the request, in the four roles icpo-eval sends:

- a **judge** request (the ``prompts/judge_llm.j2`` prompt, recognised by its ``<reply>`` block)
  gets ``{"category": ...}`` from a few surface cues (a plumbing stand-in, not a real judge);
- a **grader** request (``prompts/grader_summary.j2``, recognised by its ``<summary_to_grade>``
  block) gets the summary family's rule verdicts as the grader's JSON
  (:func:`icpo_eval.families.summary.fake_grader_reply`);
- a **simulator** request (``prompts/simulator_llm.j2``, recognised by its list of unrevealed
  shards) gets ``{"response": ..., "shard_id": <first unrevealed id>}``; a model whose name
  contains ``badsim`` answers an invalid id, to exercise the fallback;
- anything else is the **assistant**: while the user has given fewer than two numbers it asks a
  question; then it answers the sum of the numbers given ("Answer: N"). A model whose name
  contains ``guess`` answers at once. Replies start with ``[<model>]`` so that a test can tell
  whose answer it holds; above temperature 0 the wording depends on the request's seed.

Faults: a share ``fault_rate`` of requests fail with 429, 500 or a hang past the client's
timeout. Whether a request fails is decided by a seeded RNG keyed on (seed, request body, how
many times this body was seen), so a run's faults do not depend on arrival order and a retried
request may succeed. ``latency`` seconds are added to every reply (asynchronously: 64 requests
in flight wait together). ``api_key``, when set, is required as a Bearer token.

Run standalone: ``python -m icpo_eval.testing.fake_server --latency 0.2`` prints its base URL;
``GET /stats`` (next to ``/v1``) returns the request counts by role and the faults injected.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import subprocess
import sys
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from icpo_eval.aio import BackgroundLoop

FAULT_KINDS = ("429", "500", "timeout")
_HIDDEN = re.compile(r"NOT revealed yet \(JSON\):\s*(\[.*?\])\s*\n", re.S)
_REPLY = re.compile(r"<reply>\n?(.*?)\n?</reply>", re.S)
_INT = re.compile(r"(?<![\w.])(\d+)(?![\w.])")


@dataclass
class ServerLog:
    """What the server saw (in memory; no request is written anywhere)."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    unauthorised: int = 0

    def by_role(self, role: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["role"] == role]


def judge_category(reply: str) -> str:
    """The fake judge's cues (deliberately simpler than the rule judge)."""
    text = reply.strip()
    low = text.lower()
    if not text:
        return "missing"
    if re.search(r"\banswer\b\s*(?:is|:)\s*-?\$?\d", low) or "####" in text or "\\boxed" in text:
        return "answer_attempt"
    if low.count(" if ") >= 2 and len(_INT.findall(text)) >= 2:
        return "hedge"
    questions = text.count("?")
    if questions >= 2:
        return "interrogation"
    if questions == 1:
        return "clarification" if len(text.split()) <= 100 else "discussion"
    if re.search(r"\b(sorry|can't|cannot|unable)\b", low):
        return "refuse"
    return "discussion"


def _role_of(messages: list[dict[str, Any]]) -> str:
    last = str(messages[-1].get("content", "")) if messages else ""
    if "<summary_to_grade>" in last:
        return "grader"
    if "<reply>" in last and '"category"' in last:
        return "judge"
    if _HIDDEN.search(last + "\n"):
        return "simulator"
    return "assistant"


def reply_for(body: dict[str, Any]) -> str:
    """The deterministic reply to one request (see module doc)."""
    model = str(body.get("model", ""))
    messages = body.get("messages") or []
    role = _role_of(messages)
    last = str(messages[-1].get("content", "")) if messages else ""
    if role == "grader":  # the summary family's LLM grader (prompts/grader_summary.j2)
        from icpo_eval.families.summary import fake_grader_reply

        return fake_grader_reply(last)
    if role == "judge":
        m = _REPLY.search(last)
        return json.dumps({"category": judge_category(m.group(1) if m else "")})
    if role == "simulator":
        m = _HIDDEN.search(last + "\n")
        hidden = json.loads(m.group(1)) if m else []
        if not hidden:
            return json.dumps({"response": "That's all I know.", "shard_id": None})
        first = hidden[0]
        sid = 999 if "badsim" in model else first["shard_id"]
        return json.dumps({"response": f"Oh, and also: {first['shard']}", "shard_id": sid})
    users = [str(m.get("content", "")) for m in messages if m.get("role") == "user"]
    numbers = [int(x) for u in users for x in _INT.findall(u)]
    style = 0
    if float(body.get("temperature") or 0) > 0:
        style = int(body.get("seed") or 0) % 3
    if "guess" not in model and len(numbers) < 2:
        asks = [
            "Could you tell me the numbers involved?",
            "What are the quantities I should work with?",
            "Which numbers does the problem give?",
        ]
        return f"[{model}] {asks[style]}"
    total = sum(numbers)
    lead = ["Adding up what you told me.", "Putting it together.", "Summing everything up."]
    return f"[{model}] {lead[style]} Answer: {total}"


class FakeServer:
    """The server, run on its own event loop in a background thread (or via :func:`main`)."""

    def __init__(
        self,
        latency: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: tuple[str, ...] = FAULT_KINDS,
        hang_s: float = 5.0,
        seed: int = 0,
        api_key: str | None = None,
        port: int = 0,
    ):
        bad = [k for k in fault_kinds if k not in FAULT_KINDS]
        if bad:
            raise ValueError(f"unknown fault kinds {bad}")
        self.latency = latency
        self.fault_rate = fault_rate
        self.fault_kinds = fault_kinds
        self.hang_s = hang_s
        self.seed = seed
        self.api_key = api_key
        self.port = port
        self.log = ServerLog()
        self._seen: Counter[str] = Counter()
        self._bg: BackgroundLoop | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- request handling -----------------------------------------------------------------
    def _fault(self, body: dict[str, Any]) -> str | None:
        if self.fault_rate <= 0:
            return None
        canon = json.dumps(body, sort_keys=True)
        digest = hashlib.sha256(canon.encode()).hexdigest()
        self._seen[digest] += 1
        rng = random.Random(f"{self.seed}|{digest}|{self._seen[digest]}")
        if rng.random() >= self.fault_rate:
            return None
        return self.fault_kinds[rng.randrange(len(self.fault_kinds))]

    async def _handle(self, request: web.Request) -> web.Response:
        if self.api_key is not None:
            if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                self.log.unauthorised += 1
                return web.json_response(
                    {"error": {"message": "invalid api key", "type": "auth"}}, status=401
                )
        body = await request.json()
        messages = body.get("messages") or []
        self.log.requests.append(
            {
                "model": body.get("model"),
                "role": _role_of(messages),
                "seed": body.get("seed"),
                "temperature": body.get("temperature"),
                "messages": messages,
                "host": request.host,
            }
        )
        fault = self._fault(body)
        if fault is not None:
            self.log.faults[fault] += 1
            if fault == "timeout":
                await asyncio.sleep(self.hang_s)  # the client gave up long ago
            else:
                await asyncio.sleep(self.latency / 4)
                status = int(fault)
                return web.json_response(
                    {"error": {"message": f"injected {status}", "type": "injected"}},
                    status=status,
                )
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        text = reply_for(body)
        words = text.split()
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "stop"
        if isinstance(limit, int) and len(words) > limit:
            text, finish = " ".join(words[:limit]), "length"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = len(text.split())
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/chat/completions", self._handle)
        app.router.add_get("/stats", self._stats)
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        """Request counts by role and faults (for benchmarks that run the server apart)."""
        roles = Counter(r["role"] for r in self.log.requests)
        return web.json_response(
            {"requests": len(self.log.requests), "by_role": roles, "faults": self.log.faults}
        )

    # -- lifecycle ------------------------------------------------------------------------
    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        self.url = f"http://{host}:{port}/v1"

    def start(self) -> str:
        """Serve in a background thread; returns the base URL (``http://127.0.0.1:PORT/v1``)."""
        bg = BackgroundLoop("fake-openai-server")
        try:
            bg.run(self._start(), timeout=10)
        except BaseException:
            bg.stop(timeout=10)
            raise
        self._bg = bg
        return self.url

    def stop(self) -> None:
        if self._bg is None:
            return

        async def cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        # Handlers still hanging (injected timeouts) are cancelled, not left pending.
        self._bg.stop(cleanup, timeout=10)
        self._bg = None

    def __enter__(self) -> FakeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_process(latency: float) -> tuple[subprocess.Popen[str], str]:
    """The server in a process of its own (benchmarks: so that its work does not share the
    measured process's interpreter), and its base URL. Kill the process when done."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "icpo_eval.testing.fake_server", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit(f"fake server did not start: {url!r}")
    return proc, url


def answered(url: str) -> int:
    """How many requests the server at ``url`` has answered so far (its ``/stats``)."""
    with urllib.request.urlopen(url.rsplit("/v1", 1)[0] + "/stats") as r:
        return int(json.load(r)["requests"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every reply")
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--hang", type=float, default=5.0, help="seconds a 'timeout' fault hangs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    server = FakeServer(args.latency, args.fault_rate, hang_s=args.hang, seed=args.seed)

    async def serve() -> None:
        await server._start()
        print(server.url, flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
