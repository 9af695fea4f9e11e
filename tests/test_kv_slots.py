"""The continuous batch's key/value store (blocks), its ragged attention, and prompt prefixes
shared across conversations.

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


class TinyBackend:
    """What :class:`ContinuousBatch` needs of a LocalBackend, over the tiny Llama: a request's
    "messages" are its prompt's token ids."""

    name = "tiny"

    def __init__(self, batch_size: int = 4, prefill_chunk: int = 256) -> None:
        self.model = tiny_llama()
        self.device = "cpu"
        self.batch_size = batch_size
        self.prefill_chunk = prefill_chunk
        self.cache_arg = "cache"
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = [eos] if isinstance(eos, int) else list(eos or [])

    def encode(self, messages):
        return list(messages)

    def to_generation(self, tokens, tokens_in, latency):
        from icpo_eval.models.base import Generation

        return Generation(text="", tokens_in=tokens_in, tokens_out=len(tokens), ids=list(tokens))


def stream(backend, prompts, max_new_tokens=6, session_hook=None):
    """Greedy replies (token ids) to ``prompts`` through one continuous-batching session."""
    from icpo_eval.models.base import GenParams
    from icpo_eval.models.local.batch import ContinuousBatch

    out = {}
    session = ContinuousBatch(
        backend, GenParams(max_new_tokens=max_new_tokens), lambda k, g: out.__setitem__(k, g.ids)
    )
    if session_hook is not None:
        session_hook(session)
    session.run([(i, p, 0) for i, p in enumerate(prompts)])
    return [out[i] for i in range(len(prompts))], session


def generate(backend, prompt, max_new_tokens=6):
    with torch.no_grad():
        out = backend.model.generate(
            torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False
        )
    return out[0, len(prompt) :].tolist()


def prompts_sharing(prefix_len, tails, seed=0):
    """Prompts starting with the same ``prefix_len`` tokens (a family's system prompt), then
    tails of the given lengths that differ from their first token."""
    rng = random.Random(seed)
    system = [rng.randrange(3, 97) for _ in range(prefix_len)]
    return [
        system + [3 + i] + [rng.randrange(3, 97) for _ in range(n - 1)] for i, n in enumerate(tails)
    ]


def nan_arenas(monkeypatch):
    """Arenas full of NaN: a row reading keys/values that were never written gets NaN logits."""
    real = BlockPool._new_arena

    def new_arena(self, blocks):
        real(self, blocks)
        self.arenas[-1].fill_(float("nan"))

    monkeypatch.setattr(BlockPool, "_new_arena", new_arena)


def test_new_conversations_share_the_system_prompt_and_reply_as_generate(monkeypatch):
    """The second conversation with the same system prompt waits for the first to write it,
    gets it copied into its run and feeds only its own tail; a third one sharing 38 of its
    tokens gets those; replies equal generate's."""
    from icpo_eval.models.local.batch import MIN_SHARED

    nan_arenas(monkeypatch)
    backend = TinyBackend(batch_size=3)
    prompts = prompts_sharing(40, [5, 7])
    prompts.append(prompts[0][:38] + [1, 5, 6, 7])  # 1 is no token of prompts_sharing's
    got, session = stream(backend, prompts)
    assert got == [generate(backend, p) for p in prompts]
    stats = session.stats
    assert 38 >= MIN_SHARED and stats.shared_tokens == 40 + 38
    # step 1: only the first prompt (the others wait for its prefix); step 2: the first
    # row's sampled token and the others' tails alone
    assert stats.tokens[:2] == [45, 1 + 7 + 4]
    assert [len(p.ids) for p in session.prefixes] == [40] and session.prefixes[0].kv is not None


def test_a_prefix_is_copied_only_once_written(monkeypatch):
    """Rows admitted in the same step as the row computing their prefix, which takes several
    steps (chunks of 9 tokens): they feed nothing until it is written, then reply as generate
    (reading an unwritten position would give NaN, so other tokens). A prompt sharing less
    than ``MIN_SHARED`` tokens gets nothing."""
    nan_arenas(monkeypatch)
    backend = TinyBackend(batch_size=4, prefill_chunk=9)
    prompts = prompts_sharing(40, [3, 4, 6])
    prompts.append(prompts[0][:20] + [7, 8, 9])  # 20 tokens in common only
    waited = []  # rows seen waiting for a prefix at the start of a step

    def hook(session):
        real = session._step

        def step():
            for row in session.rows:
                if row.wait is not None:
                    assert row.filled == 0 and row.wait.holder.filled < len(row.wait.ids)
                    waited.append(row.key)
            real()

        session._step = step

    got, session = stream(backend, prompts, session_hook=hook)
    assert got == [generate(backend, p) for p in prompts]
    assert set(waited) == {1, 2}  # they did wait
    assert session.stats.shared_tokens == 2 * 40
    assert max(session.stats.tokens) <= 9


def test_the_prefix_store_keeps_the_most_recently_used(monkeypatch):
    """Six families one after the other (two rows at a time): each family's second
    conversation is served its system prompt, and only the last ``MAX_PREFIXES`` are kept."""
    from icpo_eval.models.local.batch import MAX_PREFIXES

    backend = TinyBackend(batch_size=2)
    families = [prompts_sharing(33 + f, [4, 5], seed=f + 1) for f in range(6)]
    prompts = [p for fam in families for p in fam]
    sizes = []

    def hook(session):
        real = session._step

        def step():
            real()
            sizes.append(sum(p.kv is not None for p in session.prefixes))

        session._step = step

    got, session = stream(backend, prompts, max_new_tokens=3, session_hook=hook)
    assert got == [generate(backend, p, 3) for p in prompts]
    assert MAX_PREFIXES == 4 and max(sizes) == MAX_PREFIXES
    assert [len(p.ids) for p in session.prefixes] == [33 + f for f in range(2, 6)]
    assert session.stats.shared_tokens == sum(33 + f for f in range(6))


def test_conversations_interleave_up_to_twice_the_batch_and_reply_as_generate():
    """Three-turn conversations, two rows: a free row takes a new conversation while fewer than
    INTERLEAVE × batch are started and unfinished, else the oldest waiting follow-up; every
    turn (its prompt the previous prompt, the reply and a new user message) equals generate's."""
    from icpo_eval.models.base import GenParams
    from icpo_eval.models.local.batch import INTERLEAVE, ContinuousBatch

    backend = TinyBackend(batch_size=2)
    firsts = prompts_sharing(8, [4, 5, 6, 7, 8, 9], seed=3)
    turns: dict[int, list[tuple[list[int], list[int]]]] = {i: [] for i in range(len(firsts))}
    prompts = dict(enumerate(firsts))
    live, in_flight = set(), []

    def on_result(key, gen):
        turns[key].append((prompts[key], gen.ids))
        if len(turns[key]) == 3:
            live.discard(key)
            return None
        prompts[key] = prompts[key] + gen.ids + [50 + key, 51, 52]
        return key, prompts[key], 0

    session = ContinuousBatch(backend, GenParams(max_new_tokens=4), on_result)
    real = session._step

    def step():
        live.update(row.key for row in session.rows)
        in_flight.append(len(live))
        real()

    session._step = step
    session.run([(i, p, 0) for i, p in enumerate(firsts)])
    assert all(len(t) == 3 for t in turns.values())
    for key, played in turns.items():
        for prompt, reply in played:
            assert reply == generate(backend, prompt, 4), key
    assert INTERLEAVE == 2 and max(in_flight) == INTERLEAVE * backend.batch_size
