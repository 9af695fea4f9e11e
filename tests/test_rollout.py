"""Conversation rollouts (icpo_eval/rollout.py): the policy plays whole conversations against the
simulator inside GRPO; what each conversation returns, which tokens are trained, and two real
training steps through TRL's ``rollout_func``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_math

from icpo_eval.errors import IcpoError
from icpo_eval.judges import RuleJudge
from icpo_eval.models.base import Generation, GenParams
from icpo_eval.rollout import (
    ConversationReward,
    ConversationRollout,
    TokenPrompt,
    conversation_values,
    item_key,
)
from icpo_eval.simulator import RuleSimulator
from icpo_eval.train import Recipe, load_recipe

ROOT = Path(__file__).resolve().parent.parent
ASK_START = "How many apples does Tom start with in his basket?"
ASK_BUY = "How many apples does Tom buy at the market?"
ASK_HAT = "What colour is the hat Tom wears on market day?"
WRONG = "Tom has 3 + 4 = 7 apples.\nAnswer: 7"
RIGHT = "3 + 5 = 8.\nAnswer: 8"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from icpo_eval.models.local import smollm2_checkpoint

    return AutoTokenizer.from_pretrained(str(smollm2_checkpoint()))


class ScriptedBackend:
    """Plays fixed replies per conversation; records the ids it was handed for every turn."""

    def __init__(self, tokenizer, scripts: list[list[str]]):
        self.tokenizer = tokenizer
        self.stop_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self.scripts = scripts
        self.fed: dict[int, list[list[int]]] = {}
        self.sampled: dict[int, list[list[int]]] = {}

    def encode(self, messages):
        if isinstance(messages, TokenPrompt):
            return list(messages.ids)
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def stream(self, requests, params, on_result):
        queue = list(requests)
        while queue:
            key, msgs, _seed = queue.pop(0)
            self.fed.setdefault(key, []).append(self.encode(msgs))
            turn = len(self.sampled.setdefault(key, []))
            text = self.scripts[key][min(turn, len(self.scripts[key]) - 1)]
            # What a model samples: a leading space and a trailing newline the harness strips
            # from the text it stores, then the end-of-turn token.
            ids = self.tokenizer(" " + text + "\n", add_special_tokens=False).input_ids
            ids = list(ids) + self.stop_ids
            self.sampled[key].append(ids)
            follow = on_result(key, Generation(text=text, ids=ids, tokens_out=len(ids)))
            if follow is not None:
                queue.insert(0, follow)


def _rollout(scripts, tokenizer, mode="sharded"):
    inst = make_math()
    key = item_key(mode, inst.task_id)
    backend = ScriptedBackend(tokenizer, scripts)
    ro = ConversationRollout(
        items={key: (inst, mode)},
        simulator=RuleSimulator(),
        judge=RuleJudge(),
        params=GenParams(temperature=1.0, max_new_tokens=64),
        backend_factory=lambda model, tok: backend,
    )
    out = ro.rollout([key] * len(scripts), model=None, tokenizer=tokenizer, step=0)
    return ro, out, backend


def test_the_return_pays_asking_while_incomplete_and_answering_once_complete(tokenizer):
    """make_math: shards 1-3 needed, shard 4 a distractor, cap 4 + 2 = 6 turns."""
    scripts = [
        [ASK_START, ASK_BUY, RIGHT],  # asks while incomplete, answers right once complete
        [ASK_START, ASK_BUY, WRONG, WRONG],  # asks, then answers wrong
        [ASK_START, ASK_BUY, ASK_HAT, ASK_START],  # never answers
        [WRONG, WRONG, RIGHT],  # guesses, right only once complete
    ]
    ro, out, _ = _rollout(scripts, tokenizer)
    returns = out["icpo_return"]
    turns = [[t.reward for t in tr.record.assistant_turns] for tr in ro.last]
    assert turns[0] == [1.0, 1.0, 1.0] and returns[0] == 1.0
    # The wrong answer ends the conversation only once every shard (the distractor too) is out.
    assert turns[1] == [1.0, 1.0, 0.0, 0.0] and returns[1] == 0.5
    # Holding back after the task is complete earns nothing, to the turn cap.
    assert turns[2] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0] and returns[2] == pytest.approx(1 / 3)
    assert ro.last[2].record.assistant_turns[2].fully_specified
    assert turns[3] == [0.0, 0.0, 1.0] and returns[3] == pytest.approx(1 / 3)
    assert returns[0] > returns[1] > returns[2]

    values = dict(conversation_values(out["icpo_conversation"]))
    # Underspecified turns: 2 + 2 + 2 held, 2 guessed; fully specified: 0, 2, 4 and 0 held.
    assert values["icpo/non_answer_under"].count(1.0) == 6
    assert len(values["icpo/non_answer_under"]) == 8
    assert sum(values["icpo/over_clarification"]) == 4
    assert len(values["icpo/over_clarification"]) == 1 + 2 + 4 + 1
    assert values["icpo/correct"] == [1.0, 0.0, 0.0, 1.0]
    assert values["icpo/turns"] == [3.0, 4.0, 6.0, 3.0]


def test_the_trained_tokens_are_the_sampled_ones_and_the_history_is_what_the_policy_saw(tokenizer):
    scripts = [[ASK_START, ASK_BUY, RIGHT], [WRONG, WRONG, RIGHT]]
    ro, out, backend = _rollout(scripts, tokenizer)
    for i, tr in enumerate(ro.last):
        seq = tr.prompt_ids + tr.completion_ids
        assert len(tr.env_mask) == len(tr.completion_ids)
        # The policy's tokens are exactly what it sampled, leading space and newline included
        # (the stored text is stripped), each reply's end-of-turn token once.
        mine = [t for t, m in zip(tr.completion_ids, tr.env_mask) if m]
        assert mine == [t for ids in backend.sampled[i] for t in ids]
        # Every turn was generated from a prefix of the very sequence that is trained.
        for fed in backend.fed[i]:
            assert seq[: len(fed)] == fed
        assert backend.fed[i][0] == tr.prompt_ids
        # The environment's tokens are the user turns and role headers, never the replies.
        env = tokenizer.decode([t for t, m in zip(tr.completion_ids, tr.env_mask) if not m])
        users = [t.content for t in tr.record.turns if t.role == "user"][1:]
        assert all(u in env for u in users) and "Answer" not in env
        assert env.count("<|im_start|>assistant") == len(users)
        assert tr.completion_ids[-1] == backend.stop_ids[0]  # ends on the last reply


def test_the_reward_function_returns_the_rollouts_returns_and_logs_per_turn_shares(tokenizer):
    _, out, _ = _rollout([[ASK_START, ASK_BUY, RIGHT], [WRONG]], tokenizer, mode="full")
    logged: dict[str, list[float]] = {}
    fn = ConversationReward()
    rewards = fn(
        prompts=["x", "x"],
        completions=["a", "b"],
        icpo_return=out["icpo_return"],
        icpo_conversation=out["icpo_conversation"],
        log_metric=lambda name, value: logged.setdefault(name, []).append(value),
    )
    # Full mode: one fully specified turn; a clarification earns 0, a wrong answer 0.
    assert rewards == [0.0, 0.0]
    assert logged["icpo/over_clarification_single"] == [1.0, 0.0]
    assert logged["icpo/correct_single"] == [0.0, 0.0]
    assert "icpo/turns" not in logged and "icpo/non_answer_under" not in logged


def test_a_non_answer_stating_a_number_in_words_is_counted():
    summary = json.dumps(
        {
            "mode": "sharded",
            "fully": [False, False, True],
            "held": [True, True, False],
            "words": [True, False, False],
            "correct": True,
            "failed": False,
            "capped": False,
        }
    )
    failed = json.dumps({"mode": "sharded", "failed": True})
    values = dict(conversation_values([summary, failed]))
    assert values["icpo/non_answer_number_words"] == [1.0, 0.0]
    assert values["icpo/turns"] == [3.0]  # the failed conversation is left out


def test_an_unknown_training_item_is_one_clear_error(tokenizer):
    ro = ConversationRollout(
        items={}, simulator=RuleSimulator(), judge=RuleJudge(), params=GenParams()
    )
    with pytest.raises(IcpoError, match="unknown training item"):
        ro.states(["sharded:nope"], step=0)


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"rollout": "tree"}, "single or conversation"),
        ({"rollout": "conversation", "conversation_modes": ["chat"]}, "conversation_modes"),
        ({"rollout": "conversation", "conversation_modes": []}, "conversation_modes"),
        ({"rollout": "conversation", "top_k": 20}, "top_p only"),
        ({"rollout": "conversation", "max_turns": 0}, "max_turns"),
    ],
)
def test_bad_conversation_recipes_are_refused(fields, words):
    with pytest.raises(IcpoError, match=words):
        Recipe(num_generations=2, per_device_train_batch_size=4, **fields).check(1)


def test_the_online_recipe_loads_and_plays_conversations():
    r = load_recipe(ROOT / "train" / "smollm2-cpu-online.yaml")
    assert r.rollout == "conversation" and "sharded" in r.conversation_modes
    assert "full" in r.conversation_modes  # it also learns to answer a complete prompt


@pytest.mark.slow
def test_sampled_conversations_with_the_embedded_model_train_exactly_what_was_sampled(
    tokenizer,
):
    """The real backend over the model in memory: every turn's prompt is the exact prefix of the
    trained sequence, and the trained tokens are the ids the model sampled."""
    import torch
    from transformers import AutoModelForCausalLM

    from icpo_eval.models.local import smollm2_checkpoint
    from icpo_eval.rollout import _backend_class

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_checkpoint()), dtype=torch.float32)
    inst = make_math()
    key = item_key("sharded", inst.task_id)
    fed: list[list[int]] = []
    sampled: list[tuple[int, ...]] = []

    class Watched(_backend_class()):
        def encode(self, messages):
            ids = super().encode(messages)
            fed.append(ids)
            return ids

        def to_generation(self, tokens, tokens_in, latency):
            gen = super().to_generation(tokens, tokens_in, latency)
            sampled.append(tuple(gen.ids))
            return gen

    backend = Watched.from_model("policy", model, tokenizer, batch_size=4)
    ro = ConversationRollout(
        items={key: (inst, "sharded")},
        simulator=RuleSimulator(),
        judge=RuleJudge(),
        params=GenParams(temperature=1.0, max_new_tokens=12),
        max_turns=3,
        backend_factory=lambda m, t: backend,
    )
    out = ro.rollout([key] * 3, model, tokenizer, step=0)
    assert len(out["completion_ids"]) == 3
    seqs = [tr.prompt_ids + tr.completion_ids for tr in ro.last]
    turns = 0
    for tr in ro.last:
        n = len(tr.record.assistant_turns)
        turns += n
        # The trained tokens, split at the environment's, are replies the model sampled.
        runs, cur = [], []
        for t, m in zip(tr.completion_ids, tr.env_mask):
            if m:
                cur.append(t)
            elif cur:
                runs.append(tuple(cur))
                cur = []
        runs.append(tuple(cur))
        assert len(runs) == n and all(r in sampled for r in runs)
    assert len(sampled) == turns
    # Every prompt the engine was fed is a prefix of a trained sequence: the engine generated
    # each turn from exactly the history that is trained.
    assert len(fed) >= turns
    assert all(any(seq[: len(ids)] == ids for seq in seqs) for ids in fed)
    assert turns > 3  # some conversations went on past their first turn


@pytest.mark.slow
def test_two_conversation_steps_through_trl_train_on_the_policys_tokens_only(tmp_path):
    from icpo_eval.tasksets import write_jsonl
    from icpo_eval.train import train

    write_jsonl([make_math("t1", "8"), make_math("t2", "8")], tmp_path / "train.jsonl")
    recipe = load_recipe(ROOT / "train" / "smollm2-cpu-online.yaml")
    recipe.tasks = str(tmp_path / "train.jsonl")
    recipe.output_dir = str(tmp_path / "ckpt")
    recipe.max_steps = 2
    recipe.num_generations = 2
    recipe.per_device_train_batch_size = 4
    recipe.max_completion_length = 12
    recipe.max_turns = 2
    recipe.max_minutes = None

    import icpo_eval.rollout as rollout_mod

    seen: list[list[int]] = []
    real = rollout_mod.ConversationRollout.rollout

    def spy(self, prompts, model, tok, step):
        out = real(self, prompts, model, tok, step)
        seen.append([sum(m) for m in out["env_mask"]])
        return out

    rollout_mod.ConversationRollout.rollout = spy
    try:
        out = train(recipe)
    finally:
        rollout_mod.ConversationRollout.rollout = real
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2] and len(seen) == 2
    for e, lengths in zip(log, seen):
        # TRL counted only the policy's tokens (env_mask), not the simulator's turns.
        assert e["completions/mean_length"] == pytest.approx(sum(lengths) / len(lengths))
        assert "icpo/correct" in e or "icpo/correct_single" in e
    summary = json.loads((out / "icpo_train.json").read_text())
    assert summary["rollout"] == "conversation" and summary["train_task_ids"] == ["t1", "t2"]
    assert summary["prompts"] == 4  # 2 instructions x (sharded, full)
