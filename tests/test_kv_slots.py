"""The continuous batch's key/value store (``SlotLayer``) against plain concatenation.

Fast: tensors only, no model. The end-to-end check (streamed turns equal static
``transformers.generate``) is ``test_local_model.py``, which is slow.
"""

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from icpo_eval.models.base import GenParams  # noqa: E402
from icpo_eval.models.local.kv_store import slot_cache, swap_remove  # noqa: E402


class Reference:
    """What ``DynamicLayer`` would hold: rows concatenated, zero left-padding, plus a mask."""

    def __init__(self) -> None:
        self.keys = None
        self.mask = None  # n × width, True on real columns

    def join(self, keys, real):
        if self.keys is None:
            self.keys, self.mask = keys, real
            return
        gap = self.keys.shape[2] - keys.shape[2]
        if gap > 0:
            keys = torch.nn.functional.pad(keys, (0, 0, gap, 0))
            real = torch.nn.functional.pad(real, (gap, 0))
        elif gap < 0:
            self.keys = torch.nn.functional.pad(self.keys, (0, 0, -gap, 0))
            self.mask = torch.nn.functional.pad(self.mask, (-gap, 0))
        self.keys = torch.cat([self.keys, keys])
        self.mask = torch.cat([self.mask, real])

    def step(self, keys):
        self.keys = torch.cat([self.keys, keys], dim=2)
        self.mask = torch.cat([self.mask, torch.ones(len(self.mask), 1, dtype=torch.bool)], 1)

    def keep(self, order, start):
        self.keys = self.keys[order][:, :, start:]
        self.mask = self.mask[order][:, start:]


def rows(n: int, width: int, rng: random.Random):
    """n rows of random keys, each with a random number of left-padding columns (zeros)."""
    keys = torch.randn(n, 2, width, 3)
    real = torch.ones(n, width, dtype=torch.bool)
    for i in range(n):
        pad = rng.randrange(width)
        keys[i, :, :pad] = 0
        real[i, :pad] = False
    return keys, real


@pytest.mark.parametrize("seed", range(5))
def test_slot_layer_matches_concatenation_on_real_columns(seed):
    rng = random.Random(seed)
    slots = 6
    # room 64 (the minimum): several windows outgrow their buffer and move during the run
    layer = _slot_cache_layer(slots, max_new_tokens=8)
    ref = Reference()
    moved = 0
    for _ in range(200):
        n = 0 if ref.keys is None else len(ref.keys)
        op = rng.random()
        if n < slots and (n == 0 or op < 0.2):
            keys, real = rows(rng.randint(1, slots - n), rng.randint(1, 40), rng)
            layer.join(keys, keys * 2)
            ref.join(keys, real)
        elif op < 0.35:
            done = set(rng.sample(range(n), rng.randint(1, n)))
            if len(done) == n:
                continue
            order = swap_remove(n, done)
            assert sorted(order) == sorted(set(range(n)) - done)
            start = int(ref.mask[order].any(dim=0).nonzero()[0])
            layer.keep(order, start)
            ref.keep(order, start)
        else:
            buffer = layer.kbuf
            new = torch.randn(n, 2, 1, 3)
            k, _ = layer.update(new, new * 2)
            ref.step(new)
            moved += layer.kbuf is not buffer
            assert k.shape == ref.keys.shape
        real = ref.mask[:, None, :, None]
        assert layer.keys.shape == ref.keys.shape
        assert torch.equal(torch.where(real, layer.keys, 0), ref.keys)
        assert torch.equal(torch.where(real, layer.values, 0), ref.keys * 2)
        assert torch.isfinite(layer.keys).all()  # masked columns: zeros or stale, never garbage
    assert moved >= 1


def _slot_cache_layer(slots: int, max_new_tokens: int):
    from transformers import LlamaConfig

    config = LlamaConfig(
        num_hidden_layers=1,
        hidden_size=8,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=8,
        vocab_size=16,
    )
    return slot_cache(config, slots, GenParams(max_new_tokens=max_new_tokens)).layers[0]
