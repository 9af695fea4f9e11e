"""The continuous batch's key/value store (blocks) and its ragged attention.

Fast: a tiny random Llama, no checkpoint. The end-to-end check (streamed turns equal static
``transformers.generate``) is ``test_local_model.py``, which is slow.
"""

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from icpo_eval.models.local.kv_store import (  # noqa: E402
    BLOCK,
    BlockPool,
    RaggedCache,
    Segment,
    StepPlan,
    ragged_attention_on,
)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in SmolLM2
        intermediate_size=64,
        vocab_size=97,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def test_pool_takes_gives_back_grows_and_moves():
    model = tiny_llama()
    pool = BlockPool(model.config, torch.float32, "cpu")
    a = pool.take(3 * BLOCK)
    b = pool.take(1)
    assert (a.arena, a.first, a.blocks) == (0, 0, 3) and (b.first, b.blocks) == (3, 1)
    assert pool.held == 4
    pool.arenas[0][:, :, :, a.start : a.start + 2 * BLOCK] = 7.0
    # b sits right after a: growing a must move it, keeping the first tokens
    moved = pool.extend(a, 5 * BLOCK, keep=2 * BLOCK)
    assert moved.first == 4 and moved.blocks == 5 and pool.held == 6
    assert (pool.arenas[0][:, :, :, moved.start : moved.start + 2 * BLOCK] == 7.0).all()
    pool.give(b)
    # the blocks after b's are free now: a run there grows in place
    c = pool.take(BLOCK)
    assert c.first == 0
    grown = pool.extend(c, 3 * BLOCK, keep=BLOCK)
    assert (grown.first, grown.blocks) == (0, 3)
    assert pool.extend(grown, 2 * BLOCK, keep=0) is grown  # big enough already
    # a run larger than an arena gets an arena of its own
    big = pool.take(300 * BLOCK)
    assert big.arena == 1 and big.blocks == 300 and len(pool.arenas) == 2
    for run in (moved, grown, big):
        pool.give(run)
    assert pool.held == 0 and pool.peak == 5 + 3 + 300
    assert pool.take(BLOCK).first == 0  # given-back blocks are taken again first


@pytest.mark.parametrize("seed", range(3))
def test_ragged_steps_match_one_plain_forward_per_row(seed):
    """Rows packed into ragged steps (prompts in chunks, then decoding, rows joining later)
    give each row the logits of a plain forward pass over that row alone."""
    rng = random.Random(seed)
    model = tiny_llama()
    pool = BlockPool(model.config, torch.float32, "cpu")
    cache = RaggedCache(pool)
    seqs = [[rng.randrange(97) for _ in range(rng.randint(2, 40))] for _ in range(5)]
    with torch.no_grad():
        ref = [model(input_ids=torch.tensor([s])).logits[0] for s in seqs]
    runs = [pool.take(len(s)) for s in seqs]
    filled = [0] * len(seqs)
    got = [[None] * len(s) for s in seqs]
    step = 0
    with torch.no_grad(), ragged_attention_on(model):
        while any(f < len(s) for f, s in zip(filled, seqs)):
            segments, ids, pos, offset, fed = [], [], [], 0, []
            for i, s in enumerate(seqs):
                if filled[i] == len(s) or i > step:  # row i joins at step i
                    continue
                n = min(len(s) - filled[i], rng.randint(1, 9))
                segments.append(Segment(runs[i], filled[i], n, offset))
                ids += s[filled[i] : filled[i] + n]
                pos += range(filled[i], filled[i] + n)
                fed.append((i, offset, n))
                offset += n
            step += 1
            if not segments:
                continue
            cache.plan = StepPlan(pool, segments, groups=2)
            logits = model(
                input_ids=torch.tensor([ids]),
                position_ids=torch.tensor([pos]),
                cache=cache,
                ragged_plan=cache.plan,
            ).logits[0]
            for i, off, n in fed:
                for j in range(n):
                    got[i][filled[i] + j] = logits[off + j]
                filled[i] += n
    assert model.config._attn_implementation == "sdpa"  # switched back
    for r, g in zip(ref, got):
        assert torch.allclose(torch.stack(g), r, atol=1e-5)
