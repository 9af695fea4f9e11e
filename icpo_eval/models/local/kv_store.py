"""The continuous batch's key/value store: fixed-size blocks, and attention over per-row lengths.

**Blocks.** Keys and values live in *arenas*, one tensor each of shape
layers × 2 (keys, values) × kv-heads × tokens × head-dim, cut along the tokens into blocks of
:data:`BLOCK` positions. A row takes a *run* of consecutive blocks sized for its prompt and
its reply (:meth:`BlockPool.take`) and gives it back when it ends (:meth:`BlockPool.give`);
a finished turn keeps its run for the conversation's next turn, which reuses the common prefix
in place and only writes the new tokens (:meth:`BlockPool.extend` moves it when it has to
grow past a neighbour); a prompt prefix that other conversations share is copied out of a run
and into theirs (:meth:`BlockPool.copy_out`, :meth:`BlockPool.copy_in`). A run is consecutive
so that a row's keys are one view of the arena: attention reads them where they lie, with no
gather. On the CPU arenas are ``torch.empty``:
the operating system commits a page when it is first written, so resident memory follows the
blocks rows have actually filled, not the arenas' size.

**Ragged steps.** A step feeds every live row's new tokens (one for a decoding row, a chunk of
its prompt for a joining one) as *one* packed sequence, 1 × (sum of the rows' tokens): the
linear layers see no padding. :class:`RaggedCache` is what the model's attention layers get as
their cache: its ``update`` writes the step's keys and values into each row's run. The
attention itself is :func:`ragged_attention`, registered with transformers'
``AttentionInterface`` as ``icpo_ragged`` and switched on for a session by
:func:`ragged_attention_on`; it attends each row's queries to that row's own keys (its past
plus the new ones, causally), so a row's result does not depend on which rows it shares the
step with. Any model whose attention goes through ``AttentionInterface`` and whose cache is a
plain per-layer key/value cache (Llama, Qwen2, Mistral without a window, ...) runs this way.

Needs torch and transformers: imported by the backend only once they are known to be installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer

BLOCK = 16  # positions per block (with fp32 keys of dim 64: one 4 KiB page per head and layer)
ARENA_BLOCKS = 256  # blocks per arena unless a run needs more
RAGGED = "icpo_ragged"  # the attention implementation's name in transformers' registry


@dataclass
class Run:
    """Consecutive blocks of one arena held by a row: ``first`` and ``blocks`` count blocks."""

    arena: int
    first: int
    blocks: int

    @property
    def start(self) -> int:
        """The arena position of the row's first token."""
        return self.first * BLOCK

    @property
    def capacity(self) -> int:
        return self.blocks * BLOCK


class BlockPool:
    """Every layer's keys and values in fixed-size blocks (see the module doc)."""

    def __init__(self, config: Any, dtype: Any, device: Any) -> None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.layers = text.num_hidden_layers
        self.kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        self.head_dim = getattr(text, "head_dim", None) or (
            text.hidden_size // text.num_attention_heads
        )
        self.dtype, self.device = dtype, device
        self.arenas: list[Any] = []  # layers × 2 × kv_heads × tokens × head_dim each
        self.used: list[bytearray] = []  # per arena, one byte per block: 1 while a row holds it
        self.held = self.peak = 0  # blocks held now, and at most

    def take(self, tokens: int) -> Run:
        """A free run of consecutive blocks with room for ``tokens`` (first fit; a new arena
        when none has room)."""
        need = max(1, -(-tokens // BLOCK))
        for a, used in enumerate(self.used):
            first = used.find(bytes(need))  # the first `need` free blocks in a row
            if first >= 0:
                return self._hold(Run(a, first, need))
        self._new_arena(max(ARENA_BLOCKS, need))
        return self._hold(Run(len(self.arenas) - 1, 0, need))

    def give(self, run: Run) -> None:
        """Return a row's blocks to the pool."""
        self.used[run.arena][run.first : run.first + run.blocks] = bytes(run.blocks)
        self.held -= run.blocks

    def extend(self, run: Run, tokens: int, keep: int) -> Run:
        """``run`` with room for ``tokens``, its first ``keep`` tokens kept: as it is when it
        is big enough, grown in place when the blocks after it are free, else moved."""
        need = -(-tokens // BLOCK)
        if need <= run.blocks:
            return run
        used, end = self.used[run.arena], run.first + run.blocks
        extra = need - run.blocks
        if end + extra <= len(used) and used[end : end + extra] == bytes(extra):
            used[end : end + extra] = b"\x01" * extra
            self._count(extra)
            return Run(run.arena, run.first, need)
        moved = self.take(tokens)
        src, dst = self.arenas[run.arena], self.arenas[moved.arena]
        dst[:, :, :, moved.start : moved.start + keep] = src[:, :, :, run.start : run.start + keep]
        self.give(run)
        return moved

    def copy_out(self, run: Run, tokens: int) -> Any:
        """A copy of a run's first ``tokens`` keys/values, every layer's (layers × 2 ×
        kv_heads × tokens × head_dim): a prompt prefix shared with other rows."""
        return self.arenas[run.arena][:, :, :, run.start : run.start + tokens].clone()

    def copy_in(self, run: Run, kv: Any) -> None:
        """Write keys/values from :meth:`copy_out` at the start of a run."""
        self.arenas[run.arena][:, :, :, run.start : run.start + kv.shape[3]] = kv

    def kv(self, arena: int, layer: int) -> tuple[Any, Any]:
        """One layer's keys and values in an arena (kv_heads × tokens × head_dim each)."""
        buf = self.arenas[arena][layer]
        return buf[0], buf[1]

    def bytes_per_block(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return self.layers * 2 * self.kv_heads * BLOCK * self.head_dim * elem

    def _hold(self, run: Run) -> Run:
        self.used[run.arena][run.first : run.first + run.blocks] = b"\x01" * run.blocks
        self._count(run.blocks)
        return run

    def _count(self, blocks: int) -> None:
        self.held += blocks
        self.peak = max(self.peak, self.held)

    def _new_arena(self, blocks: int) -> None:
        shape = (self.layers, 2, self.kv_heads, blocks * BLOCK, self.head_dim)
        # empty, not zeros: pages are committed as blocks are first written (see module doc).
        self.arenas.append(torch.empty(shape, dtype=self.dtype, device=self.device))
        self.used.append(bytearray(blocks))


@dataclass
class Segment:
    """One row's part of a step: ``new`` tokens at packed offset ``offset``, written after
    the ``past`` tokens the row already holds in ``run``."""

    run: Run
    past: int
    new: int
    offset: int
    mask: Any = None  # for new > 1: (groups·new) × (past+new) causal mask; None for one token


class StepPlan:
    """What the attention layers need to know about one packed step (see the module doc)."""

    def __init__(self, pool: BlockPool, segments: list[Segment], groups: int) -> None:
        self.pool = pool
        self.segments = segments
        device = pool.device
        self.single_thread = torch.device(device).type == "cpu"
        # Where each packed token goes: per arena, its packed range (segments are sorted by
        # arena) and the arena positions it is written to.
        self.writes: list[tuple[int, int, int, Any]] = []
        by_arena: dict[int, list[Segment]] = {}
        for seg in segments:
            by_arena.setdefault(seg.run.arena, []).append(seg)
        for arena, segs in by_arena.items():
            dest = torch.cat(
                [torch.arange(s.run.start + s.past, s.run.start + s.past + s.new) for s in segs]
            ).to(device)
            self.writes.append((arena, segs[0].offset, segs[-1].offset + segs[-1].new, dest))
        for seg in segments:
            if seg.new > 1:
                q = torch.arange(seg.past, seg.past + seg.new, device=device)[:, None]
                k = torch.arange(seg.past + seg.new, device=device)[None, :]
                seg.mask = (k <= q).repeat(groups, 1)


class RaggedCache(DynamicCache):
    """The cache the model's layers see during a packed step: ``update`` writes the step's keys
    and values into the rows' runs and hands them on; :func:`ragged_attention` reads the runs."""

    def __init__(self, pool: BlockPool) -> None:
        super().__init__()
        self.pool = pool
        self.plan: StepPlan | None = None

    def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kw: Any):
        for arena, lo, hi, dest in self.plan.writes:  # type: ignore[union-attr]
            keys, values = self.pool.kv(arena, layer_idx)
            keys.index_copy_(1, dest, key_states[0, :, lo:hi])
            values.index_copy_(1, dest, value_states[0, :, lo:hi])
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


def ragged_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    ragged_plan: StepPlan | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Each row's queries (1 × heads × packed × dim) against that row's keys in its run.

    Query heads are grouped over their shared key/value head (grouped-query attention): a
    group's queries are attended together as if they were several tokens, so no key is copied.
    Returns 1 × packed × heads × dim, as transformers' attention functions do.
    """
    plan = ragged_plan
    if plan is None:
        raise RuntimeError(f"{RAGGED} attention needs a step plan (ragged_plan=...)")
    heads, dim = query.shape[1], query.shape[3]
    kv_heads = plan.pool.kv_heads
    layer = module.layer_idx
    outs = []
    # One row's attention is too small to split across threads: on a CPU each call would
    # wait on a thread barrier (ten times slower when another process holds a core).
    threads = torch.get_num_threads()
    if plan.single_thread:
        torch.set_num_threads(1)
    for seg in plan.segments:
        keys, values = plan.pool.kv(seg.run.arena, layer)
        lo, hi = seg.run.start, seg.run.start + seg.past + seg.new
        q = query[0, :, seg.offset : seg.offset + seg.new].reshape(1, kv_heads, -1, dim)
        o = F.scaled_dot_product_attention(
            q, keys[None, :, lo:hi], values[None, :, lo:hi], attn_mask=seg.mask, scale=scaling
        )
        outs.append(o.view(heads, seg.new, dim).transpose(0, 1))
    if plan.single_thread:
        torch.set_num_threads(threads)
    return torch.cat(outs).unsqueeze(0), None


AttentionInterface.register(RAGGED, ragged_attention)


@contextmanager
def ragged_attention_on(model: Any) -> Iterator[None]:
    """Route the model's attention through :func:`ragged_attention` for a session, then put
    its own implementation back (the trainer's policy trains with it afterwards)."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = RAGGED
    try:
        yield
    finally:
        config._attn_implementation = before


def plain_kv_cache(model: Any, cache_arg: str) -> bool:
    """Can the model run ragged steps? Its attention must go through transformers'
    ``AttentionInterface`` and keep a plain, growable key/value cache in every layer (not so
    with sliding windows or recurrent state)."""
    if not getattr(model, "_supports_attention_backend", False):
        return False
    cache = DynamicCache(config=model.config)
    probe = torch.tensor([[1]], device=model.device)
    with torch.no_grad():
        model(input_ids=probe, use_cache=True, **{cache_arg: cache})
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
