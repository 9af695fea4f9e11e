"""verl parity: a verl export holds the rows the TRL trainer trains on, and a verl rollout earns
the reward the TRL trainer gives the same completion, truncated rollouts included."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ScriptedBackend

from icpo_eval import verl_reward
from icpo_eval.errors import IcpoError
from icpo_eval.export import SELECTION_FILE, build_rows, export_run, load_export, verl_rows
from icpo_eval.records import Instruction, RunSpec
from icpo_eval.runner import run
from icpo_eval.selection import Selection, load_selection
from icpo_eval.tasksets import load_tasks, write_jsonl
from icpo_eval.train import IcpoReward, Recipe, load_recipe, select_rows
from icpo_eval.verl_reward import RolloutScorer, compute_score, is_truncated

FAMILIES = ("math", "code", "database", "actions")
LIMIT = 1024  # verl's rollout.response_length = TRL's max_completion_length, in tokens
EOS, PAD, OFFSET = 2, 0, 10
PROMPT_WIDTH = 32


class CharTokenizer:
    """One token per character; ids below OFFSET are special (EOS, PAD)."""

    eos_token_id = EOS
    pad_token_id = PAD

    def encode(self, text: str) -> list[int]:
        return [ord(c) + OFFSET for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        out = []
        for i in ids:
            if i >= OFFSET:
                out.append(chr(i - OFFSET))
            elif not skip_special_tokens:
                out.append("<eos>" if i == EOS else "<pad>")
        return "".join(out)


TOK = CharTokenizer()


def _reply(messages):
    users = [m for m in messages if m["role"] == "user"]
    return "Could you tell me more about what you need?" if len(users) == 1 else "Answer: 42"


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> Path:
    """A finished run (full and sharded) of one task of each family, scripted replies."""
    tmp = tmp_path_factory.mktemp("mixed")
    insts = [i for fam in FAMILIES for i in load_tasks(fam, limit=1)]
    write_jsonl(insts, tmp / "tasks.jsonl")
    out = tmp / "run"
    spec = RunSpec(
        model="scripted", tasks=str(tmp / "tasks.jsonl"), modes=["full", "sharded"], out=str(out)
    )
    run(spec, backend=ScriptedBackend(_reply), progress=False)
    return out


@pytest.fixture(scope="module")
def trl_rows(mixed_run) -> list[dict]:
    """The TRL path: a jsonl export as ``icpo-eval train`` loads it (it selects afterwards)."""
    out, _ = export_run(mixed_run, mixed_run.parent / "jsonl-export", "jsonl", augment=True)
    return load_export(out)


# --------------------------------------------------------------------------------------------
# Completions and how each path sees them
# --------------------------------------------------------------------------------------------


def _completions(inst: Instruction) -> dict[str, str]:
    f = inst.fields
    correct = {
        "math": f"Answer: {f.get('answer')}",
        "code": f"```python\n{f.get('reference')}```",
        "database": f"```sql\n{f.get('reference_sql')}\n```",
        "actions": f"```python\n{f.get('answer')}\n```",
    }[inst.task]
    guess = {
        "math": "Answer: 987654",
        "code": "```python\ndef nothing():\n    return 0\n```",
        "database": "```sql\nSELECT 1\n```",
        "actions": "```python\nget_weather(city='Atlantis', days=99)\n```",
    }[inst.task]
    intent = inst.shards[0].shard.rstrip(".?!").lower()
    return {
        "correct": correct,
        "guess": guess,
        "question": f"Could you tell me more about what you mean by this: {intent}?",
        "truncated": TOK.decode(TOK.encode(_long_question(inst))[:LIMIT]),
    }


_FRAMES = (
    "When you say {s!r}, what exactly do you have in mind?",
    "Could you say more about this part: {s}?",
    "Is {s} the whole story, or is there more I should know?",
    "Before I go on, which details of {s} matter most to you?",
    "Should I take {s} literally?",
    "How strict is {s} meant to be?",
    "Do you have an example for {s}?",
    "What would a good result look like, given {s}?",
    "Is there a deadline or a limit I should respect around {s}?",
    "Would you rather I ask again later about {s}?",
    "Who else cares about {s}, and would they answer differently?",
    "Did I understand correctly that {s} comes first?",
    "Which part of {s} was the hardest to put into words?",
    "Are any exceptions hiding behind {s}?",
    "Can I assume nothing changes about {s} later on?",
    "If {s} turned out wrong, what would you want instead?",
)


def _long_question(inst: Instruction) -> str:
    """A clarifying question about the task's shards, longer than LIMIT, never repetitive."""
    parts: list[str] = []
    while len(" ".join(parts)) <= LIMIT + 100:
        shard = inst.shards[len(parts) % len(inst.shards)].shard.rstrip(".?!").lower()
        parts.append(_FRAMES[len(parts) % len(_FRAMES)].format(s=shard))
    return " ".join(parts)


def _ids(kind: str, text: str) -> list[int]:
    """Completion token ids as a rollout engine returns them: ended by EOS, or cut at LIMIT."""
    ids = TOK.encode(text)
    if kind == "truncated":
        assert len(ids) == LIMIT
        return ids
    assert len(ids) < LIMIT
    return ids + [EOS]


def _trl_rewards(reward: IcpoReward, row: dict, kinds: list[str], texts: list[str]) -> list:
    """TRL's call: every dataset column as a list, completions as chat messages, and the
    completion ids (at most max_completion_length, ended by EOS unless cut)."""
    n = len(texts)
    ids = [_ids(k, t)[:LIMIT] for k, t in zip(kinds, texts)]
    return reward(
        prompts=[row["prompt"]] * n,
        completions=[[{"role": "assistant", "content": TOK.decode(i, True)}] for i in ids],
        fully_specified=[row["fully_specified"]] * n,
        instruction=[row["instruction"]] * n,
        family=[row["family"]] * n,
        task_id=[row["task_id"]] * n,
        completion_ids=ids,
    )


class FakeItem:
    def __init__(self, batch: dict, non_tensor_batch: dict):
        self.batch, self.non_tensor_batch = batch, non_tensor_batch


class FakeDataProto:
    """The fields of verl's DataProto a reward manager reads: ``batch`` (prompts left-padded,
    responses right-padded to the response length, attention_mask over both) and
    ``non_tensor_batch`` (the parquet row's columns, object arrays)."""

    def __init__(self, batch: dict, non_tensor_batch: dict):
        self.batch, self.non_tensor_batch = batch, non_tensor_batch

    def __len__(self) -> int:
        return len(self.batch["responses"])

    def __getitem__(self, i):
        cls = FakeDataProto if isinstance(i, slice) else FakeItem
        return cls(
            {k: v[i] for k, v in self.batch.items()},
            {k: v[i] for k, v in self.non_tensor_batch.items()},
        )


def _rollouts(records: list[dict], ids: list[list[int]]) -> FakeDataProto:
    prompts, responses, masks = [], [], []
    for rec, resp in zip(records, ids):
        p = TOK.encode(rec["prompt"][-1]["content"])[-PROMPT_WIDTH:]
        prompts.append([PAD] * (PROMPT_WIDTH - len(p)) + p)
        responses.append(resp + [PAD] * (LIMIT - len(resp)))
        masks.append(
            [0] * (PROMPT_WIDTH - len(p))
            + [1] * len(p)
            + [1] * len(resp)
            + [0] * (LIMIT - len(resp))
        )
    non_tensor = {}
    for key in records[0]:
        column = np.empty(len(records), dtype=object)
        column[:] = [r[key] for r in records]
        non_tensor[key] = column
    return FakeDataProto(
        {
            "prompts": torch.tensor(prompts),
            "responses": torch.tensor(responses),
            "attention_mask": torch.tensor(masks),
        },
        non_tensor,
    )


def _verl_wrap(fn, reward_kwargs):
    """What verl's get_custom_reward_fn hands a reward manager: the function, with the config's
    reward_kwargs merged into every call."""

    def call(*args, **kwargs):
        return fn(*args, **{**kwargs, **reward_kwargs})

    return call


def _plain(value):
    """A parquet value as verl's dataset hands it over (numpy arrays → lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value]
    return value


@pytest.fixture
def fake_verl(monkeypatch):
    """Just enough of verl's module tree for the reward managers: both registries and bases,
    with verl's signatures (RewardManagerBase(config, compute_score, tokenizer))."""

    def registry_module(name: str) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.REGISTRY = {}

        def register(key):
            def deco(cls):
                if key in mod.REGISTRY and mod.REGISTRY[key] is not cls:
                    raise ValueError(f"reward manager {key} has already been registered")
                mod.REGISTRY[key] = cls
                return cls

            return deco

        mod.register = register
        return mod

    base = types.ModuleType("verl.experimental.reward_loop.reward_manager.base")

    class RewardManagerBase:
        def __init__(self, config, compute_score, tokenizer):
            self.config, self.tokenizer = config, tokenizer

    base.RewardManagerBase = RewardManagerBase
    abstract = types.ModuleType("verl.workers.reward_manager.abstract")

    class AbstractRewardManager:
        pass

    abstract.AbstractRewardManager = AbstractRewardManager
    modules = {
        "verl": types.ModuleType("verl"),
        "verl.experimental": types.ModuleType("verl.experimental"),
        "verl.experimental.reward_loop": types.ModuleType("verl.experimental.reward_loop"),
        "verl.experimental.reward_loop.reward_manager": registry_module(
            "verl.experimental.reward_loop.reward_manager"
        ),
        "verl.experimental.reward_loop.reward_manager.base": base,
        "verl.workers": types.ModuleType("verl.workers"),
        "verl.workers.reward_manager": registry_module("verl.workers.reward_manager"),
        "verl.workers.reward_manager.abstract": abstract,
    }
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    verl_reward.forget_manager_classes()
    yield modules
    verl_reward.forget_manager_classes()


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


def test_same_rows_get_the_same_rewards_through_trl_and_verl(mixed_run, trl_rows, fake_verl):
    """For every row of the verl export and a correct answer, a guess, a clarifying question and
    that question cut at the length limit: TRL's reward function, the reward manager's scoring,
    verl's reward-loop manager and its batch manager give the same reward."""
    keep_mix = Selection(underspecified_share=None)  # every family, both kinds of prompt
    out, _ = export_run(
        mixed_run, mixed_run.parent / "verl-parity", "verl", augment=True, selection=keep_mix
    )
    records = [_plain(r) for r in pd.read_parquet(out / "train.parquet").to_dict("records")]
    by_id = {r["row_id"]: r for r in select_rows(trl_rows, Recipe(underspecified_share=None))}
    assert {r["extra_info"]["row_id"] for r in records} == set(by_id)
    assert {(r["ability"], r["extra_info"]["fully_specified"]) for r in records} == {
        (fam, fully) for fam in FAMILIES for fully in (True, False)
    }

    trl = IcpoReward("rule", eos_ids=[EOS], pad_id=PAD)
    scorer = RolloutScorer(TOK, compute_score, max_response_length=LIMIT)
    config = {"actor_rollout_ref": {"rollout": {"response_length": LIMIT}, "model": {}}}
    wrapped = _verl_wrap(compute_score, {})
    loop_mgr = verl_reward.reward_manager_cls("loop")(
        config, TOK, wrapped, reward_router_address="127.0.0.1:1", reward_model_tokenizer=None
    )
    legacy_mgr = verl_reward.reward_manager_cls("legacy")(TOK, 0, wrapped, "data_source")

    seen = {"truncated_under": 0, "correct_fully": 0}
    for rec in records:
        row = by_id[rec["extra_info"]["row_id"]]
        assert (rec["prompt"], rec["reward_model"]["ground_truth"]) == (
            row["prompt"],
            row["instruction"],
        )
        texts = _completions(Instruction.from_dict(json.loads(row["instruction"])))
        kinds = list(texts)
        want = _trl_rewards(trl, row, kinds, [texts[k] for k in kinds])
        ids = [_ids(k, texts[k])[:LIMIT] for k in kinds]
        batch = _rollouts([rec] * len(kinds), ids)
        got_scorer = [scorer.score(batch[i])["reward_score"] for i in range(len(kinds))]
        got_loop = [
            asyncio.run(loop_mgr.run_single(batch[i : i + 1]))["reward_score"]
            for i in range(len(kinds))
        ]
        legacy = legacy_mgr(batch, return_dict=True)
        lengths = batch.batch["attention_mask"][:, PROMPT_WIDTH:].sum(-1)
        got_legacy = [float(legacy["reward_tensor"][i, n - 1]) for i, n in enumerate(lengths)]
        where = (row["row_id"], kinds)
        assert got_scorer == want, where
        assert got_loop == want, where
        assert got_legacy == want, where
        assert legacy["reward_extra_info"]["icpo_truncated"] == [k == "truncated" for k in kinds]
        # What the rewards are: a truncated question is never a non-answer.
        r = dict(zip(kinds, want))
        if not row["fully_specified"]:
            assert (r["question"], r["truncated"], r["guess"]) == (1.0, 0.0, 0.0), where
            # ... and it is the truncation flag that costs it: judged as text alone it pays.
            extra = rec["extra_info"]
            gt = rec["reward_model"]["ground_truth"]
            assert compute_score(rec["data_source"], texts["truncated"], gt, extra) == 1.0
            seen["truncated_under"] += 1
        else:
            assert (r["question"], r["truncated"], r["guess"]) == (0.0, 0.0, 0.0), where
            if row["family"] != "code":  # code grading needs the sandbox; parity is enough
                assert r["correct"] == 1.0, where
                seen["correct_fully"] += 1
    assert seen["truncated_under"] >= 4 and seen["correct_fully"] >= 3


def test_truncation_rule_matches_the_trl_trainer():
    """At the length limit (where a single-turn rollout that did not end on EOS always is) the
    verl rule is TRL's: the last token is neither an end token nor padding."""
    trl = IcpoReward("rule", eos_ids=[EOS, 3], pad_id=PAD)
    end = {EOS, 3, PAD}
    for last in (15, EOS, 3, PAD):
        ids = [11, 12, 13, 14, last]
        assert is_truncated(ids, 5, end) == trl.truncated(ids), ids
    assert is_truncated([11] * 5, 5, end) and not is_truncated([11] * 4 + [EOS], 5, end)
    # Short of the limit nothing was cut (a multi-turn rollout may end on a tool's tokens).
    assert not is_truncated([11] * 4, 5, end) and not is_truncated([], 5, end)
    assert RolloutScorer(TOK).end_ids == {EOS, PAD}


def test_compute_score_takes_verl_extra_kwargs_and_truncation(trl_rows):
    row = next(r for r in trl_rows if not r["fully_specified"])
    extra = {"messages": json.dumps(row["prompt"]), "fully_specified": False}
    question = _completions(Instruction.from_dict(json.loads(row["instruction"])))["question"]
    args = ("icpo_eval/" + row["family"], question, row["instruction"], extra)
    assert compute_score(*args) == 1.0
    assert compute_score(*args, truncated=True) == 0.0
    assert compute_score(*args, reward_router_address="h:1", reward_model_tokenizer=None) == 1.0


def test_the_manager_uses_the_configured_limit_and_the_icpo_score_over_verl_defaults():
    """A rollout shorter than the padded width but at the configured response length is
    truncated; verl's built-in scorer (handed over when no custom function is set) is replaced."""
    fake_default = functools.partial(lambda **kw: 0.5)
    fake_default.func.__module__ = "verl.utils.reward_score"
    scorer = RolloutScorer(TOK, fake_default, max_response_length=4)
    assert scorer.compute_score is compute_score
    rec = {
        "data_source": "icpo_eval/math",
        "prompt": [{"role": "user", "content": "How many?"}],
        "reward_model": {"ground_truth": "{}"},
        "extra_info": {"fully_specified": False},
    }
    batch = _rollouts([rec, rec], [TOK.encode("Why?"), TOK.encode("Why") + [EOS]])
    assert [scorer.inputs(batch[i])["truncated"] for i in range(2)] == [True, False]
    assert scorer.inputs(batch[0])["solution_str"] == "Why?"
    assert RolloutScorer(TOK, max_response_length=None).inputs(batch[0])["truncated"] is False


def test_registration_once_even_when_verl_loads_the_file_again(fake_verl):
    assert verl_reward.register_reward_managers() == ["loop", "legacy"]
    loop_reg = fake_verl["verl.experimental.reward_loop.reward_manager"].REGISTRY
    legacy_reg = fake_verl["verl.workers.reward_manager"].REGISTRY
    assert loop_reg["icpo"] is verl_reward.IcpoRewardManager
    assert legacy_reg["icpo"] is verl_reward.IcpoLegacyRewardManager
    # verl's load_extern_object runs the file under a module name of its own, as often as it
    # is configured (custom_reward_function.path, reward_manager.module.path): no new classes.
    spec = importlib.util.spec_from_file_location("custom_module_1", verl_reward.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy.IcpoRewardManager is verl_reward.IcpoRewardManager
    assert loop_reg["icpo"] is copy.IcpoRewardManager
    assert verl_reward.register_reward_managers() == ["loop", "legacy"]


def test_without_verl_the_module_imports_and_the_managers_say_what_they_need(monkeypatch):
    monkeypatch.setitem(sys.modules, "verl", None)  # as if verl were not installed
    verl_reward.forget_manager_classes()
    assert verl_reward.register_reward_managers() == []
    with pytest.raises(IcpoError, match="needs verl"):
        verl_reward.reward_manager_cls("loop")
    assert not hasattr(verl_reward, "IcpoRewardManager")


# --------------------------------------------------------------------------------------------
# The same rows
# --------------------------------------------------------------------------------------------

RECIPES = [
    {},  # a recipe's defaults
    {"underspecified_share": 0.25, "seed": 3},
    {"sources": ["augment"], "max_prompts": 5, "seed": 1},
    {"underspecified_share": None, "sources": ["run"]},
]


@pytest.mark.parametrize("keys", RECIPES)
def test_verl_export_selects_the_rows_the_trl_trainer_trains_on(mixed_run, trl_rows, keys):
    recipe_file = mixed_run.parent / f"recipe-{RECIPES.index(keys)}.yaml"
    recipe_file.write_text(yaml.safe_dump({"num_generations": 2, **keys}))
    picked = select_rows(trl_rows, load_recipe(recipe_file))  # what `icpo-eval train` uses
    out, counts = export_run(
        mixed_run,
        mixed_run.parent / f"verl-sel-{RECIPES.index(keys)}",
        "verl",
        augment=True,
        selection=load_selection(recipe_file),
    )
    df = pd.read_parquet(out / "train.parquet")
    ids = [e["row_id"] for e in df["extra_info"]]
    assert ids == [r["row_id"] for r in picked]  # same rows, same order
    assert [_plain(p) for p in df["prompt"]] == [r["prompt"] for r in picked]
    assert [bool(e["fully_specified"]) for e in df["extra_info"]] == [
        r["fully_specified"] for r in picked
    ]
    assert counts["rows"] == len(picked) < len(trl_rows)
    record = json.loads((out / SELECTION_FILE).read_text())
    want = {**Selection().to_dict(), **keys}
    assert record["selection"] == want and record["row_ids"] == ids
    assert (record["rows_in"], record["rows_selected"]) == (len(trl_rows), len(picked))
    assert json.loads((out / "export.json").read_text())["selection"] == want


def test_selection_defaults_are_the_recipes():
    assert Selection.from_recipe(Recipe()) == Selection()
    recipe = Recipe(sources=["run"], underspecified_share=0.3, max_prompts=9, seed=4)
    assert Selection.from_recipe(recipe).to_dict() == {
        "sources": ["run"],
        "underspecified_share": 0.3,
        "max_prompt_tokens": None,
        "max_prompts": 9,
        "seed": 4,
        "model": "local/smollm2",
    }


def test_the_recipes_select_differently(trl_rows):
    """So that the test above would notice an export that ignored the recipe."""
    picks = [[r["row_id"] for r in verl_rows(trl_rows, Selection(**keys))] for keys in RECIPES]
    assert len({tuple(p) for p in picks}) == len(RECIPES)


def test_max_prompt_tokens_filters_with_the_trainers_count(trl_rows, monkeypatch):
    def count(messages):
        return sum(len(m["content"]) for m in messages)

    lengths = sorted(count(r["prompt"]) for r in trl_rows)
    sel = Selection(max_prompt_tokens=lengths[len(lengths) // 2], underspecified_share=None)
    monkeypatch.setattr(Selection, "token_counter", lambda self: count)
    picked = verl_rows(trl_rows, sel)
    assert [r["row_id"] for r in picked] == [
        r["row_id"] for r in select_rows(trl_rows, Recipe(**sel.to_dict()), count)
    ]
    assert len(picked) < len(verl_rows(trl_rows, Selection(underspecified_share=None)))


@pytest.mark.slow
def test_max_prompt_tokens_counts_with_the_policy_tokenizer(trl_rows):
    from transformers import AutoTokenizer

    from icpo_eval.train import prompt_tokens

    recipe = Recipe(max_prompt_tokens=200)
    tok = AutoTokenizer.from_pretrained(recipe.model_path)
    want = select_rows(trl_rows, recipe, lambda m: prompt_tokens(tok, m))
    got = verl_rows(trl_rows, Selection.from_recipe(recipe))
    assert [r["row_id"] for r in got] == [r["row_id"] for r in want]
    assert len(want) < len(select_rows(trl_rows, Recipe()))


def test_selection_is_for_verl_exports_only(mixed_run):
    with pytest.raises(IcpoError, match="verl only"):
        export_run(mixed_run, mixed_run.parent / "x", "jsonl", selection=Selection())
    with pytest.raises(IcpoError, match="sources"):
        verl_rows(build_rows(mixed_run), Selection(sources=["nope"]))
