"""One decode step of the embedded model on a long batch: concatenating cache vs slot store.

The continuous batch keeps every row's keys and values across decode steps. transformers'
``DynamicLayer`` appends a token by concatenating the whole cache (a full copy per step, per
layer); the local backend's slot store (``SlotLayer`` in ``icpo_eval/models/local/kv_store.py``)
writes the new column into preallocated room. Both are timed on the same model, batch and
context (random prompt tokens, prefilled once and loaded into both), and the steps' logits are
compared. The last line is

    speedup_at_<longest context> = concatenating ms/step ÷ slot ms/step

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

from icpo_eval.models import GenParams  # noqa: E402
from icpo_eval.models.local import smollm2_checkpoint  # noqa: E402
from icpo_eval.models.local.kv_store import slot_cache  # noqa: E402


def prefill(model, batch: int, context: int) -> tuple[DynamicCache, torch.Tensor]:
    """``context`` random prompt tokens per row through the model: their cache, last tokens."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, context), generator=gen)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, use_cache=True, past_key_values=cache, logits_to_keep=1)
    return cache, ids[:, -1:]


def steps(model, cache, filled: DynamicCache, last: torch.Tensor, n: int):
    """Load ``filled`` into ``cache``, then time ``n`` decode steps (ms per step, last logits)."""
    batch, context = filled.layers[0].keys.shape[0], filled.layers[0].keys.shape[2]
    for layer, src in zip(cache.layers, filled.layers):
        if hasattr(layer, "join"):
            layer.join(src.keys, src.values)
        else:
            layer.update(src.keys.clone(), src.values.clone())
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
                past_key_values=cache,
            )
            last = out.logits[:, -1:].argmax(dim=-1)
        return (time.perf_counter() - t0) / n * 1000, out.logits[:, -1]


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
    print("| context | concatenating ms/step | slot ms/step | ratio | max logit diff |")
    print("|---|---|---|---|---|")
    ratio = 0.0
    for context in (int(c) for c in args.contexts.split(",")):
        filled, last = prefill(model, args.batch, context)
        concat = DynamicCache(config=model.config)
        concat_ms, concat_logits = steps(model, concat, filled, last, args.steps)
        slots = slot_cache(model.config, args.batch, GenParams(max_new_tokens=192))
        slot_ms, slot_logits = steps(model, slots, filled, last, args.steps)
        ratio = concat_ms / slot_ms
        diff = (concat_logits - slot_logits).abs().max().item()
        print(f"| {context} | {concat_ms:.0f} | {slot_ms:.0f} | {ratio:.2f} | {diff:.1e} |")
    print(f"speedup_at_{context}={ratio:.2f}")


if __name__ == "__main__":
    main()
