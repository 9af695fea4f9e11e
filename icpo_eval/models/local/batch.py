"""Continuous batching with chunked prefill and prefix caching over a :class:`LocalBackend`.

Up to ``batch_size`` requests are live at once. Each *step* is one forward pass over every live
row's next tokens, packed into one sequence (:mod:`.kv_store`): a decoding row feeds the token
it sampled last, a joining row feeds the next chunk of its prompt. Prompts are cut into chunks
so that a step holds at most ``chunk`` tokens (the decoding rows' first): a long system prompt
is prefilled over a few steps while the other rows keep decoding. A row samples when its whole
prompt is in (its first token) and at every step after; a request that ends leaves at once and
the next waiting one joins at the next step.

Prefix caching: when a conversation's next turn arrives, the blocks of its previous turn are
kept and reused for the longest common token prefix, so only the new user message (and the
chat template around it) is fed. A follow-up returned by ``on_result`` goes to the front of the
queue; the first requests are admitted longest chain first (a request key's ``max_turns``,
when it has one: the runner's conversation state does), so that the long chains do not end
the run alone.

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

from icpo_eval.models.base import Generation, GenParams, Messages
from icpo_eval.models.local.kv_store import (
    BlockPool,
    RaggedCache,
    Run,
    Segment,
    StepPlan,
    ragged_attention_on,
)
from icpo_eval.models.local.sampling import GumbelSampler, seeded

if TYPE_CHECKING:
    from icpo_eval.models.local.backend import LocalBackend

Request = tuple[Any, Messages, int]


@dataclass
class Row:
    """A live request: its prompt, its blocks, what it feeds next and its reply so far."""

    key: Any
    ids: list[int]  # the prompt's token ids
    run: Run  # its blocks in the pool
    filled: int  # tokens whose keys/values are in ``run``
    feed: list[int]  # tokens still to feed: the rest of the prompt, then the last sample
    started: float
    generator: Any
    tokens: list[int] = field(default_factory=list)


@dataclass
class Saved:
    """A finished turn's blocks, kept for its conversation's next turn (prefix caching)."""

    ids: list[int]  # the tokens whose keys/values are in ``run``
    run: Run


@dataclass
class Stats:
    """What a session did, for benchmarks: per step, live rows and packed tokens."""

    rows: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    peak_blocks: int = 0
    block_bytes: int = 0
    moves: int = 0  # runs moved to grow past a neighbour


class ContinuousBatch:
    """One continuous-batching session over a LocalBackend (see the module doc)."""

    def __init__(self, backend: LocalBackend, params: GenParams, on_result: Callable) -> None:
        self.b = backend
        self.params = params
        self.on_result = on_result
        self.chunk = max(backend.batch_size + 1, backend.prefill_chunk)
        dtype = next(backend.model.parameters()).dtype
        self.pool = BlockPool(backend.model.config, dtype, backend.device)
        self.cache = RaggedCache(self.pool)
        text = backend.model.config.get_text_config()
        self.groups = text.num_attention_heads // self.pool.kv_heads
        self.rows: list[Row] = []
        self.saved: dict[Any, Saved] = {}
        self.stats = Stats(block_bytes=self.pool.bytes_per_block())

    def run(self, requests: list[Request]) -> None:
        # Longest chains first (stable: equal chains keep their order).
        first = sorted(requests, key=lambda r: -(getattr(r[0], "max_turns", 0) or 0))
        queue: deque[Request] = deque(first)
        with torch.no_grad(), ragged_attention_on(self.b.model):
            while queue or self.rows:
                self._admit(queue)
                self._step()
                self._emit_finished(queue)
        self.stats.peak_blocks = self.pool.peak

    def _admit(self, queue: deque[Request]) -> None:
        """Join waiting requests while there are free rows; a conversation's next turn keeps
        its previous turn's blocks for the common prefix and feeds only the rest."""
        while queue and len(self.rows) < self.b.batch_size:
            key, msgs, seed = queue.popleft()
            ids = self.b.encode(msgs)
            room = len(ids) + self.params.max_new_tokens
            saved = self.saved.pop(key, None)
            n = 0
            if saved is not None:
                # The longest common prefix (commonprefix works on any sequences), leaving at
                # least one token to feed: the step that feeds it gives the first logits.
                n = min(len(os.path.commonprefix([saved.ids, ids])), len(ids) - 1)
                before = saved.run
                run = self.pool.extend(before, room, keep=n)
                self.stats.moves += run.arena != before.arena or run.first != before.first
            else:
                run = self.pool.take(room)
            gen = seeded(seed, self.b.device) if self.params.temperature > 0 else None
            self.rows.append(Row(key, ids, run, n, ids[n:], time.perf_counter(), gen))

    def _step(self) -> None:
        """One forward pass over every live row's next tokens (see the module doc)."""
        decoding = [r for r in self.rows if r.tokens]
        budget = self.chunk - len(decoding)
        plan: list[tuple[Row, int]] = [(r, 1) for r in decoding]
        for row in self.rows:
            if not row.tokens and budget > 0:
                n = min(len(row.feed), budget)
                plan.append((row, n))
                budget -= n
        plan.sort(key=lambda p: p[0].run.arena)  # the store writes each arena's tokens at once
        segments, ids, positions, sample_at, sampling = [], [], [], [], []
        offset = 0
        for row, n in plan:
            segments.append(Segment(row.run, row.filled, n, offset))
            ids += row.feed[:n]
            positions += range(row.filled, row.filled + n)
            offset += n
            if n == len(row.feed):  # its prompt is all in: it samples
                sample_at.append(offset - 1)
                sampling.append(row)
        self.cache.plan = StepPlan(self.pool, segments, self.groups)
        dev = self.b.device
        out = self.b.model(
            input_ids=torch.tensor([ids], device=dev),
            position_ids=torch.tensor([positions], device=dev),
            use_cache=True,
            logits_to_keep=torch.tensor(sample_at, dtype=torch.long, device=dev),
            ragged_plan=self.cache.plan,
            **{self.b.cache_arg: self.cache},
        )
        self.cache.plan = None
        for row, n in plan:
            row.filled += n
            row.feed = row.feed[n:]
        for row, tok in zip(sampling, self._sample(out.logits[0], sampling)):
            row.tokens.append(tok)
            row.feed = [tok]
        self.stats.rows.append(len(self.rows))
        self.stats.tokens.append(offset)

    def _done(self, row: Row) -> bool:
        if not row.tokens:
            return False
        return row.tokens[-1] in self.b.stop_ids or len(row.tokens) >= self.params.max_new_tokens

    def _emit_finished(self, queue: deque[Request]) -> None:
        """Hand every ended row to ``on_result``; queue the follow-ups it returns first and
        keep the row's blocks for them (a follow-up for another key frees them)."""
        finished = [r for r in self.rows if self._done(r)]
        if not finished:
            return
        self.rows = [r for r in self.rows if not self._done(r)]
        for row in finished:
            follow = self.on_result(row.key, self._generation(row))
            if follow is not None:
                queue.appendleft(follow)
            if follow is not None and follow[0] == row.key:  # the same conversation goes on
                # The last sampled token was never fed, so it has no keys/values yet.
                self.saved[row.key] = Saved(row.ids + row.tokens[:-1], row.run)
            else:
                self.pool.give(row.run)

    def _sample(self, logits: Any, rows: list[Row]) -> list[int]:
        if not rows:
            return []
        if self.params.temperature <= 0:
            return logits.argmax(dim=-1).tolist()
        sampler = GumbelSampler(
            [r.generator for r in rows], self.params.temperature, self.params.top_p
        )
        return sampler(None, logits).argmax(dim=-1).tolist()

    def _generation(self, row: Row) -> Generation:
        return self.b.to_generation(row.tokens, len(row.ids), time.perf_counter() - row.started)
