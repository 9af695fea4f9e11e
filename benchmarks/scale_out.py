"""Requests per second with ``--workers 1`` and ``--workers 2`` (Ray actors) through litellm.

Why this benchmark: through litellm one process is CPU-bound near 120-150 requests/s (4-5 ms
of litellm work per call), whatever ``--concurrency`` allows. ``--workers N`` spreads the
conversations over N Ray actors, each with its own litellm client and its share of the
concurrency (``C // N``), so the ceiling should grow with the cores.

Set-up: the local OpenAI-compatible test server runs in its own process
(``python -m icpo_eval.testing.fake_server --latency 0.2``), the model is ``openai/fake-a`` on
``--transport litellm`` with ``--api-base`` pointing at it, ``--concurrency 256`` for the whole
run, sharded math conversations at temperature 0.7 (every run of an instruction is its own
request) with a fresh response cache per row, so every request reaches the server. One local
Ray instance (``num_cpus`` = the machine's cores, no dashboard) is started once, before the
rows, as a cluster would be: Ray's start-up is not in the figures, the workers' start-up
(importing litellm, building the client) is.

Columns: ``seconds`` is the whole ``run()`` call (workers started, every conversation run and
written); ``requests`` is what the server answered (its ``/stats``); ``requests/s`` = requests ÷
seconds. ``busy s`` is the longest worker's span from its first chunk handed out to its last
chunk back (the run without the workers' start-up, about 3 s of imports on a small machine),
and ``busy req/s`` the rate over it. The last line is

    scaling_2_workers = requests/s with 2 workers ÷ requests/s with 1 worker

on the whole-run figures (start-up included).

``--local`` adds the embedded model (``local/smollm2``, 1 and 2 workers; each worker gets
``cores // N`` torch threads); it prints ``scaling_2_workers_local=…`` too.

Run: ``python benchmarks/scale_out.py [--latency 0.2] [--limit 200] [--runs 5] [--local]``
(about 2 minutes on 2 cores; ``--local`` adds a few minutes).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from icpo_eval.records import RunSpec  # noqa: E402
from icpo_eval.runner import run  # noqa: E402
from icpo_eval.testing.fake_server import answered, start_process  # noqa: E402


def measure_api(url: str, workers: int, limit: int, runs: int) -> dict[str, float]:
    """One row: sharded math through litellm on ``workers`` Ray actors."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ICPO_EVAL_CACHE"] = str(Path(tmp) / "cache")
        spec = RunSpec(
            model="openai/fake-a",
            tasks="math",
            modes=["sharded"],
            runs=runs,
            limit=limit,
            temperature=0.7,
            out=str(Path(tmp) / "run"),
            api_base=[url],
            concurrency=256,
            transport="litellm",
            workers=workers,
        )
        before = answered(url)
        t0 = time.perf_counter()
        res = run(spec, progress=False)
        seconds = time.perf_counter() - t0
        requests = answered(url) - before
    failed = sum(c.error is not None for c in res.conversations)
    assert failed == 0, f"{failed} conversations failed"
    return {
        "workers": workers,
        "convs": len(res.conversations),
        "requests": requests,
        "seconds": seconds,
        "rate": requests / seconds,
        "busy": max(w.seconds for w in res.workers),
    }


def measure_local(workers: int, limit: int) -> dict[str, float]:
    """One row: the embedded model on ``workers`` Ray actors (rate: assistant turns/s)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = RunSpec(
            model="local/smollm2",
            tasks="math",
            modes=["sharded"],
            limit=limit,
            max_new_tokens=48,
            out=str(Path(tmp) / "run"),
            workers=workers,
        )
        t0 = time.perf_counter()
        res = run(spec, progress=False)
        seconds = time.perf_counter() - t0
    turns = sum(len(c.assistant_turns) for c in res.conversations)
    return {
        "workers": workers,
        "convs": len(res.conversations),
        "requests": turns,
        "seconds": seconds,
        "rate": turns / seconds,
        "busy": max(w.seconds for w in res.workers),
    }


def table(title: str, unit: str, rows: list[dict[str, float]]) -> None:
    print(title)
    print(f"| workers | conversations | {unit} | seconds | {unit}/s | busy s | busy {unit}/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {int(r['workers'])} | {int(r['convs'])} | {int(r['requests'])} "
            f"| {r['seconds']:.2f} | {r['rate']:.1f} | {r['busy']:.2f} "
            f"| {r['requests'] / r['busy']:.1f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--limit", type=int, default=200, help="math instructions per row")
    p.add_argument("--runs", type=int, default=5, help="runs per instruction")
    p.add_argument("--local", action="store_true", help="also the embedded model")
    p.add_argument("--local-limit", type=int, default=32)
    args = p.parse_args()

    import ray

    cores = os.cpu_count() or 1
    ray.init(num_cpus=max(2, cores), include_dashboard=False, logging_level=logging.WARNING)
    proc, url = start_process(args.latency)
    try:
        measure_api(url, 2, 4, 1)  # warm-up: Ray's worker processes, imports
        api_rows = [measure_api(url, n, args.limit, args.runs) for n in (1, 2)]
        local_rows = [measure_local(n, args.local_limit) for n in (1, 2)] if args.local else []
    finally:
        proc.terminate()
        proc.wait(10)
        ray.shutdown()
    print(f"{cores} CPU cores; fake server latency {args.latency:.3f} s; litellm, concurrency 256")
    table("API (openai/fake-a through litellm)", "requests", api_rows)
    if local_rows:
        table("local/smollm2 (sharded math, 48 new tokens at most)", "turns", local_rows)
        print(f"scaling_2_workers_local={local_rows[1]['rate'] / local_rows[0]['rate']:.2f}")
    busy = [r["requests"] / r["busy"] for r in api_rows]
    print(f"busy_scaling_2_workers={busy[1] / busy[0]:.2f}")
    print(f"scaling_2_workers={api_rows[1]['rate'] / api_rows[0]['rate']:.2f}")


if __name__ == "__main__":
    main()
