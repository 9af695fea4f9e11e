"""The local transformers backend: a causal LM answering chats, with per-request seeds.

:meth:`LocalBackend.stream` is continuous batching with chunked prefill and prefix caching
(:mod:`.batch`): one forward pass per step over every live row's new tokens, packed, with
attention over each row's own keys in a store of fixed-size blocks (:mod:`.kv_store`);
sampling is seeded per request (:mod:`.sampling`), so a reply does not depend on the batch it
shared. When the model's cache is not a plain per-layer key/value cache (sliding windows,
recurrent state) or its attention does not go through transformers' ``AttentionInterface``,
the backend falls back to static padded batches through ``transformers.generate``.

This module imports torch and transformers only inside its methods, after checking that they
are installed, so that a missing install is one line naming the command that fixes it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.models.base import Generation, GenParams, Messages
from icpo_eval.models.local.checkpoint import LOCAL_INSTALL, require

#: ``--batch-size auto`` on a CPU: what 2 cores sustain with the embedded model (128 sharded
#: math conversations, greedy, 48 tokens a turn: batch 8, 16, 32, 64 gave 79.7, 111.6, 132.8
#: and 128.3 tokens/s; README "Batch size").
CPU_AUTO_BATCH = 32
#: ``--batch-size auto`` on a GPU: as many rows as have room for :data:`GPU_AUTO_CONTEXT`
#: positions of keys and values in :data:`GPU_AUTO_SHARE` of the memory left free once the
#: model is loaded, between these bounds.
GPU_AUTO_BATCH = (16, 256)
GPU_AUTO_CONTEXT = 4096
GPU_AUTO_SHARE = 0.5


def kv_bytes_per_position(config: Any, element_size: int) -> int:
    """Bytes of keys and values one position of one row holds, over every layer."""
    text = getattr(config, "text_config", None) or config
    layers = int(getattr(text, "num_hidden_layers", 0) or 0)
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    dim = getattr(text, "head_dim", None) or (
        int(getattr(text, "hidden_size", 0) or 0) // max(heads, 1)
    )
    return 2 * layers * kv_heads * int(dim) * element_size


def auto_batch_size(device: str, per_position: int, free_bytes: int | None) -> tuple[int, str]:
    """The batch ``--batch-size auto`` picks, and why (one phrase for the run's log line).

    A CPU is compute-bound past a few dozen rows, so it gets :data:`CPU_AUTO_BATCH`; a GPU
    runs as many rows as its free memory holds keys and values for (:data:`GPU_AUTO_CONTEXT`
    positions each, in :data:`GPU_AUTO_SHARE` of ``free_bytes``), within
    :data:`GPU_AUTO_BATCH`.
    """
    if not str(device).startswith("cuda"):
        return CPU_AUTO_BATCH, "CPU"
    lo, hi = GPU_AUTO_BATCH
    if not free_bytes or per_position <= 0:
        return lo, "GPU, free memory unknown"
    rows = int(free_bytes * GPU_AUTO_SHARE) // (per_position * GPU_AUTO_CONTEXT)
    return max(lo, min(hi, rows)), (
        f"GPU, {free_bytes / 2**30:.1f} GiB free, "
        f"{per_position * GPU_AUTO_CONTEXT / 2**20:.0f} MiB of keys and values a row"
    )


def _free_gpu_bytes(device: str) -> int | None:
    import torch

    try:
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    except (RuntimeError, AssertionError, ValueError):
        return None


class LocalBackend:
    """A transformers causal LM answering chats (continuous batching, see the module doc).

    ``batch_size`` None is ``--batch-size auto`` (:func:`auto_batch_size`); the size chosen is
    :attr:`batch_size` and the reason :attr:`batch_note`.
    """

    def __init__(self, name: str, path: str | Path, batch_size: int | None = 16):
        for mod in ("torch", "transformers"):
            require(mod, LOCAL_INSTALL)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=torch.bfloat16 if device == "cuda" else torch.float32
            )
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise IcpoError(f"cannot load model {name!r} from {path}: {first}") from None
        model.to(device).eval()
        self._attach(name, model, tokenizer, batch_size, device)

    @classmethod
    def from_model(
        cls, name: str, model: Any, tokenizer: Any, batch_size: int | None = 16
    ) -> LocalBackend:
        """A backend over a model already in memory (the policy being trained: the
        conversation trainer's rollouts), on the model's device, leaving its mode alone."""
        self = cls.__new__(cls)
        self._attach(name, model, tokenizer, batch_size, str(next(model.parameters()).device))
        return self

    def _attach(
        self, name: str, model: Any, tokenizer: Any, batch_size: int | None, device: str
    ) -> None:
        from icpo_eval.models.local.kv_store import plain_kv_cache

        self.name = name
        self.device = device
        self.batch_note = ""
        if batch_size is None:
            element = next(model.parameters()).element_size()
            free = _free_gpu_bytes(device) if str(device).startswith("cuda") else None
            batch_size, why = auto_batch_size(
                device, kv_bytes_per_position(model.config, element), free
            )
            self.batch_note = f"batch size {batch_size} (auto: {why})"
        self.batch_size = batch_size
        # Most tokens one continuous-batching step feeds (decoding rows first, then chunks of
        # joining prompts): on a CPU a step's time grows with its tokens, so a long prompt is
        # cut up rather than stalling the decoding rows; a GPU takes far more per step.
        self.prefill_chunk = 2048 if str(device).startswith("cuda") else 256
        self.last_stats: Any = None  # the last stream session's Stats (benchmarks read it)
        self.tokenizer = tokenizer
        self.model = model
        if not getattr(self.tokenizer, "chat_template", None):
            raise IcpoError(f"model {name!r}: its tokenizer has no chat template")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.stop_ids = _stop_ids(self.model, self.tokenizer)
        # transformers 5 renamed the forward argument `past_key_values` to `cache`.
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self._streamable = plain_kv_cache(self.model, self.cache_arg)

    def generate(
        self, requests: list[Messages], params: GenParams, seeds: list[int]
    ) -> list[Generation]:
        """Answer every request (continuous batching, or static batches as a fallback)."""
        if self._streamable:
            results: dict[int, Generation] = {}
            self.stream(
                [(i, m, s) for i, (m, s) in enumerate(zip(requests, seeds))],
                params,
                lambda i, g: results.__setitem__(i, g),
            )
            return [results[i] for i in range(len(requests))]
        return self.generate_static(requests, params, seeds)

    def generate_static(
        self, requests: list[Messages], params: GenParams, seeds: list[int]
    ) -> list[Generation]:
        """Static padded batches through ``transformers.generate`` (sorted by length)."""
        prompts = [
            self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
            for m in requests
        ]
        lengths = [len(self.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        results: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            outs = self._generate_batch([prompts[i] for i in idx], params, [seeds[i] for i in idx])
            for i, g in zip(idx, outs):
                results[i] = g
        return [g for g in results if g is not None]

    def stream(
        self,
        requests: list[tuple[Any, Messages, int]],
        params: GenParams,
        on_result: Callable[[Any, Generation], tuple[Any, Messages, int] | None],
    ) -> None:
        """Continuous batching (:mod:`.batch`). ``requests`` are ``(key, messages, seed)``.

        ``on_result(key, generation)`` is called as soon as a request ends; it may return a
        follow-up request (a conversation's next turn); follow-ups and new conversations
        share the rows as :mod:`.batch` schedules them (up to twice the batch in flight).
        """
        if not self._streamable:
            for key, msgs, seed in requests:
                pending: list[tuple[Any, Messages, int]] = [(key, msgs, seed)]
                while pending:
                    k, m, sd = pending.pop()
                    follow = on_result(k, self.generate([m], params, [sd])[0])
                    if follow is not None:
                        pending.append(follow)
            return
        from icpo_eval.models.local.batch import ContinuousBatch

        session = ContinuousBatch(self, params, on_result)
        self.last_stats = session.stats
        session.run(requests)

    def encode(self, messages: Messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _generate_batch(
        self, prompts: list[str], params: GenParams, seeds: list[int]
    ) -> list[Generation]:
        import torch
        from transformers import LogitsProcessorList

        from icpo_eval.models.local.sampling import GumbelSampler, seeded

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        processors = LogitsProcessorList()
        if params.temperature > 0:
            generators = [seeded(seed, self.device) for seed in seeds]
            processors.append(GumbelSampler(generators, params.temperature, params.top_p))
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                **enc,
                max_new_tokens=params.max_new_tokens,
                do_sample=False,
                logits_processor=processors,
                eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        latency = time.perf_counter() - t0
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        tokens_in = enc["attention_mask"].sum(dim=1).tolist()
        return [self.to_generation(row, int(n), latency) for row, n in zip(new, tokens_in)]

    def to_generation(self, tokens: list[int], tokens_in: int, latency: float) -> Generation:
        """A reply from its generated ids: cut at the first stop token (kept in the count)."""
        stop_at = next((j for j, t in enumerate(tokens) if t in self.stop_ids), None)
        kept = tokens if stop_at is None else tokens[:stop_at]
        sampled = tokens if stop_at is None else tokens[: stop_at + 1]
        return Generation(
            text=self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
            tokens_in=tokens_in,
            tokens_out=len(kept) + (0 if stop_at is None else 1),
            truncated=stop_at is None,
            latency_s=round(latency, 4),
            ids=list(sampled),
        )


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's end-of-sequence ids: its generation config's and its tokenizer's."""
    ids: set[int] = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)
