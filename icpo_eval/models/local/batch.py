"""Continuous batching with prefix caching over a :class:`LocalBackend`.

Up to ``batch_size`` requests decode together, one token per step over a shared key/value cache
(the slot store, :mod:`.kv_store`); a request that ends leaves the batch at once (its rows are
cut out of the cache) and a waiting one is prefilled and joins, its cache left-padded to the
batch's length. A static padded batch would keep computing for every row until the longest
reply ends; here the batch stays full while work is waiting.

Prefix caching: when a conversation's next turn arrives, the cache of its previous turn is
reused for the longest common token prefix, so only the new user message is prefilled (in a
sharded conversation the history is most of every prompt).

Needs torch and transformers: imported by the backend only once they are known to be installed.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from icpo_eval.models.base import Generation, GenParams, Messages
from icpo_eval.models.local.kv_store import slot_cache, swap_remove
from icpo_eval.models.local.sampling import GumbelSampler, seeded

if TYPE_CHECKING:
    from icpo_eval.models.local.backend import LocalBackend


@dataclass
class Row:
    """A live request: its prompt, when it started, its sampler state and its reply so far."""

    key: Any
    ids: list[int]  # the prompt's token ids
    started: float
    generator: Any
    tokens: list[int] = field(default_factory=list)


@dataclass
class Saved:
    """A finished request's cache, kept for its conversation's next turn (prefix caching)."""

    ids: list[int]  # tokens whose keys/values are in ``kv``
    kv: list[tuple[Any, Any]]  # per layer, keys and values of shape 1×heads×len(ids)×dim


class ContinuousBatch:
    """One continuous-batching session over a LocalBackend (see the module doc).

    State: ``rows`` (live requests), ``mask`` (B×T attention mask, 0 = left padding), the
    shared cache (per layer, keys/values of shape B×heads×T×dim) and ``last`` (B×1, the token
    each row feeds next).
    """

    def __init__(self, backend: LocalBackend, params: GenParams, on_result: Callable) -> None:
        self.b = backend
        self.params = params
        self.on_result = on_result
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: Any = None
        self.last: Any = None
        self.saved: dict[Any, Saved] = {}

    def run(self, requests: list[tuple[Any, Messages, int]]) -> None:
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

    def _new_row(self, key: Any, ids: list[int], seed: int) -> Row:
        gen = seeded(seed, self.b.device) if self.params.temperature > 0 else None
        return Row(key, ids, time.perf_counter(), gen)

    def _merge(self, cache: Any, mask: Any, logits: Any, rows: list[Row]) -> None:
        """Sample the new rows' first tokens and join them to the batch (left-padding)."""
        first = self._sample(logits, rows)
        for row, tok in zip(rows, first):
            row.tokens.append(tok)
        last = torch.tensor(first, device=self.b.device).unsqueeze(1)
        if self.cache is None:
            self.cache = slot_cache(self.b.model.config, self.b.batch_size, self.params)
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

    def _done(self, row: Row) -> bool:
        return row.tokens[-1] in self.b.stop_ids or len(row.tokens) >= self.params.max_new_tokens

    def _pop_finished(self) -> list[tuple[Row, Saved]]:
        """Remove the rows that ended; return each with its cache (for a next turn)."""
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
            finished.append((row, Saved(row.ids + row.tokens[:-1], kv)))
        kept = len(self.rows) - len(done)
        if not kept:
            self.rows, self.cache, self.mask, self.last = [], None, None, None
            return finished
        order = swap_remove(len(self.rows), done)
        self.rows = [self.rows[i] for i in order]
        idx = torch.tensor(order, device=self.b.device)
        self.mask, self.last = self.mask[idx], self.last[idx]
        # Drop the left columns that are now padding in every remaining row.
        start = int(self.mask.any(dim=0).nonzero()[0])
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keep(order, start)
        return finished

    def _sample(self, logits: Any, rows: list[Row]) -> list[int]:
        if self.params.temperature <= 0:
            return logits.argmax(dim=-1).tolist()
        sampler = GumbelSampler(
            [r.generator for r in rows], self.params.temperature, self.params.top_p
        )
        return sampler(None, logits).argmax(dim=-1).tolist()

    def _generation(self, row: Row) -> Generation:
        return self.b.to_generation(row.tokens, len(row.ids), time.perf_counter() - row.started)
