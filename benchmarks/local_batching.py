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

Run: ``.venv/bin/python benchmarks/local_batching.py [--n 16] [--n-large 128] [--batch 16]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from icpo_eval.models import load_backend  # noqa: E402
from icpo_eval.records import RunSpec  # noqa: E402
from icpo_eval.runner import run  # noqa: E402


class StaticBatches:
    """The local backend without streaming: the runner's rounds over static padded batches."""

    def __init__(self, backend) -> None:  # type: ignore[no-untyped-def]
        self.name = backend.name
        self.generate = backend.generate_static


def harness(backend, batch: int, n: int, tokens: int) -> tuple[float, int, int]:  # type: ignore[no-untyped-def]
    """Run n sharded conversations; return (seconds, assistant turns, generated tokens)."""
    inner = getattr(backend, "inner", backend)
    inner.batch_size = batch
    with tempfile.TemporaryDirectory() as tmp:
        spec = RunSpec(
            model="local/smollm2",
            tasks="math",
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


def raw_generate(backend, batch: int, tokens: int, n: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    import torch

    from icpo_eval.families import get_family
    from icpo_eval.prompting import render_prompt
    from icpo_eval.tasksets import load_tasks

    family = get_family("math")
    system = render_prompt(family.system_prompt_template)
    insts = load_tasks("math", n)[:batch]
    prompts = [
        backend.tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": i.shards[0].shard}],
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="conversations for the 1-vs-B comparison")
    ap.add_argument("--n-large", type=int, default=128, help="conversations for the large run")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48, help="max new tokens per turn")
    args = ap.parse_args()

    backend = load_backend("local/smollm2")
    static = StaticBatches(backend)
    static.inner = backend  # type: ignore[attr-defined]
    harness(backend, args.batch, 2, 8)  # warm-up: first-call overheads out of the timings
    n, b = args.n, args.batch
    rows = []
    w1, t1, k1 = harness(backend, 1, n, args.tokens)
    rows.append(("harness, one at a time", n, 1, t1, k1, w1))
    ws, ts, ks = harness(static, b, n, args.tokens)
    rows.append(("harness, static batches", n, b, ts, ks, ws))
    wc, tc, kc = harness(backend, b, n, args.tokens)
    rows.append(("harness, continuous", n, b, tc, kc, wc))
    wb, tb, kb = harness(backend, b, args.n_large, args.tokens)
    rows.append(("harness, continuous", args.n_large, b, tb, kb, wb))
    wr, kr = raw_generate(backend, b, args.tokens, n)
    rows.append(("raw generate (reference)", b, b, None, kr, wr))

    print(
        f"sharded math conversations, greedy, max {args.tokens} new tokens per turn, "
        f"torch threads {__import__('torch').get_num_threads()}"
    )
    print(
        f"{'setting':<26} {'convs':>5} {'batch':>5} {'turns':>6} {'tokens':>7} {'seconds':>8} "
        f"{'turns/s':>8} {'tokens/s':>9}"
    )
    for name, convs, bs, turns, toks, wall in rows:
        tps = "-" if turns is None else f"{turns / wall:.2f}"
        shown = "-" if turns is None else turns
        print(
            f"{name:<26} {convs:>5} {bs:>5} {shown:>6} {toks:>7} {wall:>8.1f} {tps:>8} "
            f"{toks / wall:>9.1f}"
        )
    # A sharded conversation is a chain of turns, so with few conversations per slot the
    # longest chain, not the batch, sets the pace: the large run is the batched figure.
    speedup = (tb / wb) / (t1 / w1)
    efficiency = (kb / wb) / (kr / wr)
    print(f"speedup={speedup:.2f} efficiency={efficiency:.2f}")


if __name__ == "__main__":
    main()
