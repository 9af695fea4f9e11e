"""The continuous batch's key/value store: preallocated slots instead of a copy per token.

transformers' ``DynamicLayer`` concatenates the whole cache with each new token, a full copy per
decode step that grows with the context. :class:`SlotLayer` keeps every layer's keys and values
in buffers that outlive the steps, so a decode step writes one column in place (the per-step
gain is measured by ``benchmarks/kv_cache.py``; the README has its table).

Needs transformers: imported by the backend only once it is known to be installed.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from icpo_eval.models.base import GenParams


class SlotLayer(DynamicLayer):
    """One layer's keys and values for a continuous batch, in preallocated room.

    The buffers (``kbuf``/``vbuf``: slots × heads × capacity × dim) outlive the steps: the live
    rows are the first ``n`` slots, the live columns ``lo:hi``, and ``keys``/``values`` are
    views of that window. A step writes one column; a row that leaves is replaced by the last
    row (``keep``); rows that join are written into free slots, right-aligned (``join``).
    Columns outside a row's real tokens are masked; they hold zeros or stale keys/values
    (finite numbers that get zero attention weight).
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
        """Keep slot ``order[p]`` in slot ``p`` and drop the window's first ``start`` columns
        (every source slot past ``len(order)``, so nothing is overwritten early)."""
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


def slot_cache(config: Any, slots: int, params: GenParams) -> DynamicCache:
    """An empty cache for a continuous batch of up to ``slots`` rows (see :class:`SlotLayer`)."""
    cache = DynamicCache(config=config)
    # Room for a reply's worth of steps before the window has to move to a new buffer.
    room = max(64, params.max_new_tokens)
    cache.layers = [SlotLayer(slots, room) for _ in cache.layers]
    return cache


def swap_remove(n: int, done: set[int]) -> list[int]:
    """Which old row each surviving slot holds once the rows in ``done`` leave: the survivors
    past the end fill the holes, so only their caches move (``order[p]`` is slot p's row)."""
    kept = n - len(done)
    order = list(range(kept))
    movers = [i for i in range(kept, n) if i not in done]
    for hole, mover in zip([i for i in order if i in done], movers):
        order[hole] = mover
    return order


def plain_kv_cache(model: Any, cache_arg: str) -> bool:
    """Does the model keep a plain, growable key/value cache in every layer (the kind the slot
    store replaces)? Not so with sliding windows or recurrent state."""
    cache = DynamicCache(config=model.config)
    probe = torch.tensor([[1]], device=model.device)
    with torch.no_grad():
        model(input_ids=probe, use_cache=True, **{cache_arg: cache})
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
