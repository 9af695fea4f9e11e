"""Assistant turns per second on sharded conversations: one at a time versus batched.

The same sharded math conversations (greedy decoding, so every setting produces the same turns)
run through the real runner with the embedded model: one at a time (batch 1), in static padded
batches of B (the runner's rounds over ``transformers.generate``), and with continuous batching
over B slots (the local backend's default). For reference, raw ``model.generate`` is timed at
batch B on the first-turn prompts with every row forced to the full token budget (no early
stop, no harness work): the ceiling for the batched harness.

    speedup    = continuous-batching turns/s (``--n-large`` conversations) ÷ one-at-a-time turns/s
    efficiency = continuous-batching generated tokens/s (same run) ÷ raw generate tokens/s

Why a larger run for the batched figure: a sharded conversation is a chain of turns that
cannot run in parallel with itself. With as many conversations as slots, the longest chain sets
the pace and the batch empties as conversations end; a real run has hundreds of conversations
waiting. One at a time and static batches are timed on ``--n`` conversations (the rate per turn
is what is compared; the task set is shuffled across difficulty levels).

Also measured: the peak resident memory of the process during each setting (the kernel's
high-water mark, reset before each; the model itself is in every figure) and how full the
continuous batch was, per tenth of its steps; and a long-prompt case, the actions family (a
system prompt of about 1,500 tokens), whose efficiency is computed the same way against raw
``generate`` on its own first-turn prompts:

    long_efficiency = continuous-batching tokens/s (``--n-long`` actions conversations)
                      ÷ raw generate tokens/s (actions first-turn prompts, batch B)
    memory_ratio    = peak resident memory, continuous batch of B (large run)
                      ÷ peak resident memory, raw generate at batch B

Run: ``.venv/bin/python benchmarks/local_batching.py [--n 16] [--n-large 128] [--batch 16]
[--n-long 16]``; ``--n-long 0`` skips the long-prompt case.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from icpo_eval.models import load_backend  # noqa: E402
from icpo_eval.records import RunSpec  # noqa: E402
from icpo_eval.runner import run  # noqa: E402


class PeakRSS:
    """The process's peak resident memory (MB) while the ``with`` block runs.

    On Linux the kernel keeps the high-water mark itself (``VmHWM``), and writing ``5`` to
    ``/proc/self/clear_refs`` resets it to the current size: no sampling thread competes with
    the timed work (a 10 ms sampler cost about 3% of tokens/s). Where that file cannot be
    written, a thread samples the resident size every 10 ms instead.
    """

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_mb()
        self._thread: threading.Thread | None = None
        if reset_high_water_mark():
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            self.peak = max(self.peak, high_water_mark_mb() or 0.0)
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def reset_high_water_mark() -> bool:
    """Reset the kernel's peak resident size of this process; False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return high_water_mark_mb() is not None


def high_water_mark_mb() -> float | None:
    """``VmHWM`` of /proc/self/status in MB (10^6 bytes, as :func:`rss_mb`), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class StaticBatches:
    """The local backend without streaming: the runner's rounds over static padded batches."""

    def __init__(self, backend) -> None:  # type: ignore[no-untyped-def]
        self.name = backend.name
        self.generate = backend.generate_static


def harness(backend, batch: int, n: int, tokens: int, tasks: str = "math"):  # type: ignore[no-untyped-def]
    """Run n sharded conversations; return (seconds, assistant turns, generated tokens)."""
    inner = getattr(backend, "inner", backend)
    inner.batch_size = batch
    with tempfile.TemporaryDirectory() as tmp:
        spec = RunSpec(
            model="local/smollm2",
            tasks=tasks,
            modes=["sharded"],
            limit=n,
            max_new_tokens=tokens,
            batch_size=batch,
            out=str(Path(tmp) / "run"),
        )
        t0 = time.perf_counter()
        res = run(spec, backend=backend, progress=False)
        wall = time.perf_counter() - t0
    turns = [t for c in res.conversations for t in c.assistant_turns]
    return wall, len(turns), sum(t.tokens_out or 0 for t in turns)


def raw_generate(backend, batch: int, tokens: int, n: int, tasks: str = "math"):  # type: ignore[no-untyped-def]
    """Raw ``model.generate`` at ``batch`` on first-turn prompts, every row to the full budget:
    (seconds, generated tokens)."""
    import torch

    from icpo_eval.families import get_family
    from icpo_eval.tasksets import load_tasks

    family = get_family(tasks)
    insts = load_tasks(tasks, max(n, batch))[:batch]
    prompts = [
        backend.tokenizer.apply_chat_template(
            [
                {"role": "system", "content": family.system_prompt(i)},
                {"role": "user", "content": i.shards[0].shard},
            ],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in insts
    ]
    enc = backend.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = backend.model.generate(
            **enc,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=backend.tokenizer.pad_token_id,
        )
    wall = time.perf_counter() - t0
    return wall, (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]


def deciles(values: list[int], batch: int) -> str:
    """Mean occupancy (live rows ÷ batch) in each tenth of the steps."""
    if not values:
        return "-"
    cuts = [round(i * len(values) / 10) for i in range(11)]
    parts = [values[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    return " ".join(f"{sum(p) / len(p) / batch:.2f}" for p in parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="conversations for the 1-vs-B comparison")
    ap.add_argument("--n-large", type=int, default=128, help="conversations for the large run")
    ap.add_argument("--n-long", type=int, default=16, help="actions conversations (long prompt)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48, help="max new tokens per turn")
    args = ap.parse_args()

    backend = load_backend("local/smollm2")
    static = StaticBatches(backend)
    static.inner = backend  # type: ignore[attr-defined]
    harness(backend, args.batch, 2, 8)  # warm-up: first-call overheads out of the timings
    n, b = args.n, args.batch
    rows = []

    def timed(name, convs, bs, fn):  # type: ignore[no-untyped-def]
        with PeakRSS() as mem:
            out = fn()
        wall, turns, toks = out if len(out) == 3 else (out[0], None, out[1])
        rows.append((name, convs, bs, turns, toks, wall, mem.peak, mem.peak - mem.start))
        print(f"done: {name}, {convs} convs, {wall:.1f} s", file=sys.stderr, flush=True)
        return out

    w1, t1, _ = timed("harness, one at a time", n, 1, lambda: harness(backend, 1, n, args.tokens))
    timed("harness, static batches", n, b, lambda: harness(static, b, n, args.tokens))
    timed("harness, continuous", n, b, lambda: harness(backend, b, n, args.tokens))
    wb, tb, kb = timed(
        "harness, continuous",
        args.n_large,
        b,
        lambda: harness(backend, b, args.n_large, args.tokens),
    )
    stats, mem_b = backend.last_stats, rows[-1][6]
    wr, kr = timed(
        "raw generate (reference)", b, b, lambda: raw_generate(backend, b, args.tokens, n)
    )
    mem_r = rows[-1][6]
    long_stats = None
    if args.n_long:
        wl, _, kl = timed(
            "actions, continuous",
            args.n_long,
            b,
            lambda: harness(backend, b, args.n_long, args.tokens, "actions"),
        )
        long_stats = backend.last_stats
        wlr, klr = timed(
            "actions, raw generate",
            b,
            b,
            lambda: raw_generate(backend, b, args.tokens, args.n_long, "actions"),
        )

    print(
        f"sharded conversations, greedy, max {args.tokens} new tokens per turn, "
        f"torch threads {__import__('torch').get_num_threads()}"
    )
    print(
        f"{'setting':<26} {'convs':>5} {'batch':>5} {'turns':>6} {'tokens':>7} {'seconds':>8} "
        f"{'turns/s':>8} {'tokens/s':>9} {'peak MB':>8} {'+MB':>6}"
    )
    for name, convs, bs, turns, toks, wall, peak, grew in rows:
        tps = "-" if turns is None else f"{turns / wall:.2f}"
        shown = "-" if turns is None else turns
        print(
            f"{name:<26} {convs:>5} {bs:>5} {shown:>6} {toks:>7} {wall:>8.1f} {tps:>8} "
            f"{toks / wall:>9.1f} {peak:>8.0f} {grew:>6.0f}"
        )
    for label, st in (("math large run", stats), ("actions", long_stats)):
        if st is None:
            continue
        print(
            f"{label}: {len(st.rows)} steps, {sum(st.tokens) / len(st.tokens):.1f} tokens a step, "
            f"peak key/value blocks {st.peak_blocks * st.block_bytes / 1e6:.0f} MB, "
            f"runs moved {st.moves}, prompt tokens from shared prefixes {st.shared_tokens}; "
            f"occupancy by step decile: {deciles(st.rows, b)}"
        )
    # A sharded conversation is a chain of turns, so with few conversations per slot the
    # longest chain, not the batch, sets the pace: the large run is the batched figure.
    speedup = (tb / wb) / (t1 / w1)
    efficiency = (kb / wb) / (kr / wr)
    extra = f"memory_ratio={mem_b / mem_r:.2f}"
    if args.n_long:
        extra = f"long_efficiency={(kl / wl) / (klr / wlr):.2f} " + extra
    print(extra)
    print(f"speedup={speedup:.2f} efficiency={efficiency:.2f}")


if __name__ == "__main__":
    main()
