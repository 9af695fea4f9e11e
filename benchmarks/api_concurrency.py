"""Conversations and requests per second through the API backend at concurrency 1, 8 and 64.

The local OpenAI-compatible server (``icpo_eval/testing/fake_server.py``) runs in its own
process with ``--latency`` seconds (default 0.2) added to every reply and no faults. The real
runner drives sharded math conversations against it (rule simulator and judge unless stated),
with a fresh response cache per row, so every request reaches the server. Rows:

- ``direct``: ``hosted_vllm/…`` with ``--api-base`` (the default transport for a self-hosted
  OpenAI-compatible server: OpenAI protocol over aiohttp);
- ``litellm``: the same through ``litellm.acompletion`` (``--transport litellm``; the path of
  every other provider);
- ``direct+llm``: as ``direct``, with the LLM simulator and the LLM judge on the same server
  (three requests per turn, called from the runner's worker threads).

A request is one call the server answered (its ``/stats``). The ideal rate at concurrency C is
C ÷ latency (3 C ÷ latency for ``direct+llm``: each role has its own limit, and a conversation
waits on its three calls in turn, so that row cannot reach it); the last line is

    efficiency_at_64 = measured requests/s (direct, C = 64) ÷ (64 ÷ latency)

Run: ``python benchmarks/api_concurrency.py [--latency 0.2] [--quick]`` (about a minute).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from icpo_eval.records import RunSpec  # noqa: E402
from icpo_eval.runner import run  # noqa: E402
from icpo_eval.testing.fake_server import answered, start_process  # noqa: E402


def measure(url: str, label: str, concurrency: int, runs: int, limit: int) -> dict[str, object]:
    transport = "litellm" if label == "litellm" else "auto"
    model = "openai/bench" if label == "litellm" else "hosted_vllm/bench"
    llm = label == "direct+llm"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ICPO_EVAL_CACHE"] = str(Path(tmp) / "cache")
        spec = RunSpec(
            model=model,
            tasks="math",
            modes=["sharded"],
            runs=runs,
            limit=limit,
            temperature=0.7,  # the runs of one instruction are distinct requests
            out=str(Path(tmp) / "run"),
            api_base=[url],
            concurrency=concurrency,
            transport=transport,
            simulator="llm:hosted_vllm/bench-sim" if llm else "rule",
            simulator_api_base=[url],
            judge="llm:hosted_vllm/bench-judge" if llm else "rule",
            judge_api_base=[url],
        )
        before = answered(url)
        t0 = time.perf_counter()
        res = run(spec, progress=False)
        seconds = time.perf_counter() - t0
        requests = answered(url) - before
    failed = sum(c.error is not None for c in res.conversations)
    assert failed == 0, f"{failed} conversations failed"
    return {
        "transport": label,
        "C": concurrency,
        "convs": len(res.conversations),
        "requests": requests,
        "seconds": seconds,
        "convs/s": len(res.conversations) / seconds,
        "req/s": requests / seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--quick", action="store_true", help="fewer conversations per row")
    args = p.parse_args()
    scale = 0.25 if args.quick else 1.0
    # (transport, concurrency, runs per instruction, instructions): enough conversations that
    # C requests stay in flight for most of the row (a conversation is a chain of turns).
    plan = [
        ("direct", 1, 1, 8),
        ("direct", 8, 1, 48),
        ("direct", 64, 3, 200),
        ("litellm", 1, 1, 8),
        ("litellm", 8, 1, 48),
        ("litellm", 64, 1, 200),
        ("direct+llm", 64, 1, 200),
    ]
    proc, url = start_process(args.latency)
    rows = []
    try:
        for label in ("direct", "litellm"):  # warm-up: imports and connection pools
            measure(url, label, 4, 1, 2)
        for label, c, runs, limit in plan:
            rows.append(measure(url, label, c, runs, max(2, int(limit * scale))))
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"latency {args.latency:.3f} s per request; ideal req/s = C / latency")
    header = (
        f"| {'transport':<10} | {'C':>3} | {'convs':>5} | {'requests':>8} | {'seconds':>7} "
        f"| {'convs/s':>7} | {'req/s':>7} | {'efficiency':>10} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        # direct+llm: three roles, each with its own limit of C requests in flight.
        roles = 3 if r["transport"] == "direct+llm" else 1
        ideal = roles * int(r["C"]) / args.latency  # type: ignore[call-overload]
        print(
            f"| {r['transport']:<10} | {r['C']:>3} | {r['convs']:>5} | {r['requests']:>8} "
            f"| {r['seconds']:>7.2f} | {r['convs/s']:>7.2f} | {r['req/s']:>7.1f} "
            f"| {float(r['req/s']) / ideal:>10.2f} |"  # type: ignore[arg-type]
        )
    at64 = next(r for r in rows if r["transport"] == "direct" and r["C"] == 64)
    print(f"efficiency_at_64={float(at64['req/s']) / (64 / args.latency):.2f}")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
