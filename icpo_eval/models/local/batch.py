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
chat template around it) is fed. Across conversations, new ones share the prompt prefix they
have in common (a family's system prompt, the same for all its conversations): when a first
turn starts with at least :data:`MIN_SHARED` tokens in common with the previous first turn,
that prefix's keys/values are copied out of the row that computes it, once its step has written
them, into a small store (:data:`MAX_PREFIXES` entries, least recently used dropped first).
A later first turn whose prompt starts with at least :data:`MIN_SHARED` tokens of a stored
prefix gets their keys/values copied into its run (a tensor copy instead of a forward pass over
them) and feeds only the rest. One that needs a prefix still being computed waits for it,
feeding nothing, rather than computing it again: it never reads keys not written yet.

Scheduling for the tail. A conversation is a chain of turns that cannot run in parallel with
itself, so a run ends with its last chains decoding in a near-empty batch. Two rules shorten
that tail: the first requests are admitted longest chain first (a request key's ``max_turns``,
when it has one: the runner's conversation state does), and up to :data:`INTERLEAVE` × batch
conversations are in flight at once: a free row takes a new conversation while fewer than that
are started and unfinished, else the oldest waiting follow-up (a conversation's next turn,
returned by ``on_result``). With twice as many chains as rows under way, the work left when the
last conversation starts is about as long as that conversation's own chain, so the batch stays
full to near the end; the price is the keys/values of the waiting conversations' turns, kept for
their next turn.

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

MIN_SHARED = 32  # fewest tokens a prompt prefix shared across conversations is stored for
# Most shared prefixes kept (each layers × 2 × kv-heads × its tokens × head-dim: SmolLM2-135M
# in fp32 holds 46 KB a token, so a 200-token system prompt is about 9 MB).
MAX_PREFIXES = 4
#: Conversations in flight at most, per row of the batch (see the module doc: the tail).
INTERLEAVE = 2


@dataclass(eq=False)  # rows are compared by identity (is this row still live?)
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
    wait: Prefix | None = None  # a shared prefix still being computed: feeds nothing until then


@dataclass(eq=False)
class Prefix:
    """A prompt prefix shared across conversations: computed by ``holder`` until its keys and
    values are copied out into ``kv`` (layers × 2 × kv-heads × tokens × head-dim, as an arena)."""

    ids: list[int]
    holder: Row | None  # the live row that writes it; None once ``kv`` holds it
    kv: Any = None
    # Rows to copy it into once it is in, each with how many of its tokens it shares.
    waiting: list[tuple[Row, int]] = field(default_factory=list)


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
    shared_tokens: int = 0  # prompt tokens copied from the shared-prefix store, not fed


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
        self.follow: deque[Request] = deque()  # follow-ups waiting for a row, oldest first
        self.prefixes: list[Prefix] = []  # shared prefixes, least recently used first
        self.last_first: Row | None = None  # the last first turn admitted
        self.stats = Stats(block_bytes=self.pool.bytes_per_block())

    def run(self, requests: list[Request]) -> None:
        # Longest chains first (stable: equal chains keep their order).
        first = sorted(requests, key=lambda r: -(getattr(r[0], "max_turns", 0) or 0))
        queue: deque[Request] = deque(first)
        with torch.no_grad(), ragged_attention_on(self.b.model):
            while queue or self.follow or self.rows:
                self._admit(queue)
                self._step()
                self._emit_finished()
        self.stats.peak_blocks = self.pool.peak

    def _next(self, queue: deque[Request]) -> Request:
        """The request a free row takes: a new conversation while fewer than
        :data:`INTERLEAVE` × batch are in flight, else the oldest waiting follow-up."""
        in_flight = len(self.rows) + len(self.follow)
        if queue and (not self.follow or in_flight < INTERLEAVE * self.b.batch_size):
            return queue.popleft()
        return self.follow.popleft()

    def _admit(self, queue: deque[Request]) -> None:
        """Join waiting requests while there are free rows (:meth:`_next`); a conversation's
        next turn keeps its previous turn's blocks for the common prefix and feeds only the
        rest, a first turn takes a shared prompt prefix (:meth:`_share_prefix`)."""
        while (queue or self.follow) and len(self.rows) < self.b.batch_size:
            key, msgs, seed = self._next(queue)
            ids = self.b.encode(msgs)
            room = len(ids) + self.params.max_new_tokens
            saved = self.saved.pop(key, None)
            n = 0
            if saved is not None:
                n = self._common(saved.ids, ids)  # the longest common prefix
                before = saved.run
                run = self.pool.extend(before, room, keep=n)
                self.stats.moves += run.arena != before.arena or run.first != before.first
            else:
                run = self.pool.take(room)
            gen = seeded(seed, self.b.device) if self.params.temperature > 0 else None
            row = Row(key, ids, run, n, ids[n:], time.perf_counter(), gen)
            self.rows.append(row)
            if saved is None:
                self._share_prefix(row)

    def _share_prefix(self, row: Row) -> None:
        """A first turn: remember the prefix it has in common with the previous first turn
        when that is :data:`MIN_SHARED` tokens more than a known prefix gives it, then take
        the known prefix sharing the most with it: copied in now when stored, else waited for
        (it shares at least :data:`MIN_SHARED` tokens)."""
        prev, self.last_first = self.last_first, row
        if prev is not None:
            n = self._common(prev.ids, row.ids)
            if n >= self._best_prefix(row)[1] + MIN_SHARED:
                # The previous row computes it if it is still live (it may have already).
                holder = prev if any(r is prev for r in self.rows) else row
                self.prefixes.append(Prefix(row.ids[:n], holder))
                self._store_written()
        best, n = self._best_prefix(row)
        if best is None:
            return
        if best.kv is not None:
            self._copy_in(row, best, n)
        else:
            row.wait = best
            best.waiting.append((row, n))

    def _best_prefix(self, row: Row) -> tuple[Prefix | None, int]:
        """The known prefix (not one ``row`` computes itself) sharing the most tokens with
        ``row``'s prompt, and how many: (None, 0) when none shares :data:`MIN_SHARED`."""
        shares = [
            (self._common(p.ids, row.ids), p.kv is not None, p)
            for p in self.prefixes
            if p.holder is not row
        ]
        # The most tokens, a stored prefix before one still being computed.
        n, _, best = max(shares, key=lambda s: s[:2], default=(0, False, None))
        return (best, n) if n >= MIN_SHARED else (None, 0)

    @staticmethod
    def _common(known: list[int], ids: list[int]) -> int:
        """Tokens of ``ids`` that ``known`` starts with too, leaving at least one to feed: the
        step that feeds it gives the first logits (commonprefix works on any sequences)."""
        return min(len(os.path.commonprefix([known, ids])), len(ids) - 1)

    def _store_written(self) -> None:
        """Copy out every pending prefix whose holder has written its keys/values (``filled``
        counts only written positions), hand it to the rows waiting for it, and drop the
        least recently used stored prefixes past :data:`MAX_PREFIXES`."""
        for p in list(self.prefixes):
            holder = p.holder
            if holder is None or holder.filled < len(p.ids):
                continue
            p.kv = self.pool.copy_out(holder.run, len(p.ids))
            p.holder = None
            self._touch(p)
            for waiting, n in p.waiting:
                self._copy_in(waiting, p, n)
            p.waiting = []
        stored = [p for p in self.prefixes if p.kv is not None]
        for p in stored[: max(0, len(stored) - MAX_PREFIXES)]:
            self.prefixes.remove(p)

    def _copy_in(self, row: Row, prefix: Prefix, n: int) -> None:
        """Write a stored prefix's first ``n`` keys/values at the start of ``row``'s run: it
        feeds the rest of its prompt."""
        self.pool.copy_in(row.run, prefix.kv[:, :, :, :n])
        row.filled, row.feed, row.wait = n, row.ids[n:], None
        self.stats.shared_tokens += n
        self._touch(prefix)

    def _touch(self, prefix: Prefix) -> None:
        self.prefixes.remove(prefix)
        self.prefixes.append(prefix)

    def _step(self) -> None:
        """One forward pass over every live row's next tokens (see the module doc)."""
        decoding = [r for r in self.rows if r.tokens]
        budget = self.chunk - len(decoding)
        plan: list[tuple[Row, int]] = [(r, 1) for r in decoding]
        for row in self.rows:
            if not row.tokens and row.wait is None and budget > 0:
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
        if self.prefixes:
            self._store_written()

    def _done(self, row: Row) -> bool:
        if not row.tokens:
            return False
        return row.tokens[-1] in self.b.stop_ids or len(row.tokens) >= self.params.max_new_tokens

    def _emit_finished(self) -> None:
        """Hand every ended row to ``on_result``; queue the follow-ups it returns and keep the
        row's blocks for them (a follow-up for another key frees them)."""
        finished = [r for r in self.rows if self._done(r)]
        if not finished:
            return
        self.rows = [r for r in self.rows if not self._done(r)]
        for row in finished:
            follow = self.on_result(row.key, self._generation(row))
            if follow is not None:
                self.follow.append(follow)
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
