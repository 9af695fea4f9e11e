"""One decode step of the embedded model on a long batch: concatenating cache vs block store.

The continuous batch keeps every row's keys and values across decode steps. transformers'
``DynamicLayer`` appends a token by concatenating the whole cache (a full copy per step, per
layer) and attends over a padded batch; the local backend's block store
(``icpo_eval/models/local/kv_store.py``) writes each row's new keys into its run of blocks and
attends each row to its own keys in place (a ragged step, one packed sequence). Both are timed
on the same model, batch and context (random prompt tokens, prefilled once and loaded into
both), and the steps' logits are compared. The last line is

    speedup_at_<longest context> = concatenating ms/step ÷ block-store ms/step

Run: ``.venv/bin/python benchmarks/kv_cache.py [--batch 32] [--contexts 200,800,1600]
[--steps 5] [--threads N]`` (about 2 minutes on 2 quiet cores with the defaults).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, DynamicCache  # noqa: E402

from icpo_eval.models.local import smollm2_checkpoint  # noqa: E402
from icpo_eval.models.local.kv_store import (  # noqa: E402
    BlockPool,
    RaggedCache,
    Segment,
    StepPlan,
    ragged_attention_on,
)


def prefill(model, batch: int, context: int) -> tuple[DynamicCache, torch.Tensor]:
    """``context`` random prompt tokens per row through the model: their cache, last tokens."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, context), generator=gen)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, use_cache=True, cache=cache, logits_to_keep=1)
    return cache, ids[:, -1:]


def steps(model, filled: DynamicCache, last: torch.Tensor, n: int):
    """Time ``n`` decode steps from ``filled`` with transformers' concatenating cache
    (ms per step, last logits)."""
    cache = DynamicCache(config=model.config)
    for layer, src in enumerate(filled.layers):
        cache.update(src.keys.clone(), src.values.clone(), layer)
    batch, context = filled.layers[0].keys.shape[0], filled.layers[0].keys.shape[2]
    mask = torch.ones(batch, context, dtype=torch.long)
    with torch.no_grad():
        t0 = time.perf_counter()
        for s in range(n):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(
                input_ids=last,
                attention_mask=mask,
                position_ids=torch.full((batch, 1), context + s),
                use_cache=True,
                cache=cache,
            )
            last = out.logits[:, -1:].argmax(dim=-1)
        return (time.perf_counter() - t0) / n * 1000, out.logits[:, -1]


def ragged_steps(model, filled: DynamicCache, last: torch.Tensor, n: int):
    """The same steps with the block store: one run per row, one packed token per row."""
    batch, context = filled.layers[0].keys.shape[0], filled.layers[0].keys.shape[2]
    pool = BlockPool(model.config, torch.float32, "cpu")
    cache = RaggedCache(pool)
    runs = [pool.take(context + n) for _ in range(batch)]
    for layer, src in enumerate(filled.layers):
        for i, run in enumerate(runs):
            keys, values = pool.kv(run.arena, layer)
            keys[:, run.start : run.start + context] = src.keys[i]
            values[:, run.start : run.start + context] = src.values[i]
    groups = model.config.num_attention_heads // pool.kv_heads
    ids = last[:, 0]
    with torch.no_grad(), ragged_attention_on(model):
        t0 = time.perf_counter()
        for s in range(n):
            segs = [Segment(run, context + s, 1, i) for i, run in enumerate(runs)]
            cache.plan = StepPlan(pool, segs, groups)
            out = model(
                input_ids=ids[None],
                position_ids=torch.full((1, batch), context + s),
                cache=cache,
                ragged_plan=cache.plan,
            )
            ids = out.logits[0].argmax(dim=-1)
        return (time.perf_counter() - t0) / n * 1000, out.logits[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--contexts", default="200,800,1600")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_checkpoint())).eval()
    print(f"batch {args.batch}, {args.steps} decode steps, {torch.get_num_threads()} threads")
    print("| context | concatenating ms/step | block-store ms/step | ratio | max logit diff |")
    print("|---|---|---|---|---|")
    ratio = 0.0
    for context in (int(c) for c in args.contexts.split(",")):
        filled, last = prefill(model, args.batch, context)
        concat_ms, concat_logits = steps(model, filled, last, args.steps)
        slot_ms, slot_logits = ragged_steps(model, filled, last, args.steps)
        ratio = concat_ms / slot_ms
        diff = (concat_logits - slot_logits).abs().max().item()
        print(f"| {context} | {concat_ms:.0f} | {slot_ms:.0f} | {ratio:.2f} | {diff:.1e} |")
    print(f"speedup_at_{context}={ratio:.2f}")


if __name__ == "__main__":
    main()
