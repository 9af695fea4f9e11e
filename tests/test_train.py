"""The ICPO trainer: its reward, its recipes, its data selection, and a 2-step run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_math, make_scripted_run

from icpo_eval.errors import IcpoError
from icpo_eval.export import export_run
from icpo_eval.judges import RuleJudge
from icpo_eval.records import RunSpec
from icpo_eval.runner import run
from icpo_eval.store import load_run
from icpo_eval.train import IcpoReward, Recipe, load_recipe, select_rows, step_stats

ROOT = Path(__file__).resolve().parent.parent
EOS = 2
INST = json.dumps(make_math().to_dict())  # Tom: 3 apples + 5 = 8
UNDER_PROMPT = [{"role": "user", "content": "How many apples does Tom have at the end?"}]
FULL_PROMPT = [{"role": "user", "content": make_math().fields["question"]}]

# Hand-written completions, each with the category the rule judge must give it.
NON_ANSWERS = {
    "clarification": "How many apples does Tom start with?",
    "interrogation": "How many apples does Tom start with? And how many does he buy?",
    "discussion": "To find the total I need the number of apples Tom starts with and the "
    "number he buys. Once I have both, I will add them.",
    "hedge": "If Tom starts with 3 apples and buys 5, he has 8; if he buys 6, he has 9.",
    "refuse": "I can't answer that without more information.",
}
GUESS = "Tom has 3 + 4 = 7 apples.\nAnswer: 7"
RIGHT = "3 + 5 = 8.\nAnswer: 8"


def _reward(prompt, texts, fully, ids=None, max_len=64):
    fn = IcpoReward("rule", [EOS], max_len)
    logged: dict[str, float] = {}
    out = fn(
        prompts=[prompt] * len(texts),
        completions=[[{"role": "assistant", "content": t}] for t in texts],
        fully_specified=[fully] * len(texts),
        instruction=[INST] * len(texts),
        completion_ids=ids or [[5, EOS]] * len(texts),
        log_metric=logged.__setitem__,
    )
    return out, logged


def test_reward_on_underspecified_prompts_is_one_for_each_non_answer_and_zero_for_a_guess():
    judge = RuleJudge()
    for category, text in NON_ANSWERS.items():
        assert judge.classify(make_math(), text, UNDER_PROMPT) == category, text
    texts = [*NON_ANSWERS.values(), GUESS, RIGHT]
    rewards, logged = _reward(UNDER_PROMPT, texts, fully=False)
    # A right answer given before the task is fully specified is still a guess.
    assert rewards == [1.0] * 5 + [0.0, 0.0]
    assert logged["icpo/non_answer_under"] == pytest.approx(5 / 7)
    assert logged["icpo/reward_under"] == pytest.approx(5 / 7)
    assert "icpo/reward_fully" not in logged


def test_reward_on_fully_specified_prompts_is_correctness():
    texts = [RIGHT, GUESS, NON_ANSWERS["clarification"]]
    rewards, logged = _reward(FULL_PROMPT, texts, fully=True)
    assert rewards == [1.0, 0.0, 0.0]
    assert logged["icpo/reward_fully"] == pytest.approx(1 / 3)
    assert logged["icpo/over_clarification"] == pytest.approx(1 / 3)


def test_a_truncated_non_answer_earns_nothing():
    text = NON_ANSWERS["discussion"]
    cut = [[7] * 64]  # used every token and did not end: truncated
    ended = [[7] * 63 + [EOS]]
    assert _reward(UNDER_PROMPT, [text], False, cut)[0] == [0.0]
    assert _reward(UNDER_PROMPT, [text], False, ended)[0] == [1.0]
    assert _reward(UNDER_PROMPT, [text], False, [[7] * 10])[0] == [1.0]


def test_step_stats_split_by_specification():
    stats = step_stats(
        [1.0, 0.0, 1.0, 0.0],
        ["answer_attempt", "hedge", "hedge", "missing"],
        [
            True,
            True,
            False,
            False,
        ],
    )
    assert stats == {
        "icpo/reward_fully": 0.5,
        "icpo/over_clarification": 0.5,
        "icpo/reward_under": 0.5,
        "icpo/non_answer_under": 0.5,
    }


@pytest.mark.parametrize("name", ["smollm2-cpu.yaml", "paper-qwen2.5-1.5b.yaml"])
def test_committed_recipes_load(name):
    recipe = load_recipe(ROOT / "train" / name)
    recipe.check()


def test_paper_recipe_says_what_the_paper_did():
    r = load_recipe(ROOT / "train" / "paper-qwen2.5-1.5b.yaml")
    assert (r.loss_type, r.num_generations, r.learning_rate, r.max_steps) == ("grpo", 8, 1e-6, 600)
    assert r.beta > 0  # KL on
    # 64 prompts × G per optimizer step on 8 GPUs.
    completions = r.per_device_train_batch_size * r.gradient_accumulation_steps * 8
    assert completions == 64 * r.num_generations


@pytest.mark.parametrize(
    "text, words",
    [
        ("bogus_key: 1\n", ["unknown recipe key", "bogus_key"]),
        ("learning_rate: fast\n", ["learning_rate", "float"]),
        ("loss_type: ppo\n", ["loss_type"]),
        ("max_minutes: soon\n", ["max_minutes"]),
        ("max_minutes: 0\n", ["max_minutes"]),
        ("num_generations: 3\nper_device_train_batch_size: 8\n", ["multiple of num_generations"]),
        ("- a list\n", ["mapping"]),
        ("model: [\n", ["YAML"]),
    ],
)
def test_bad_recipes_are_one_clear_error(tmp_path, text, words):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(IcpoError) as e:
        load_recipe(p)
    for w in words:
        assert w in str(e.value)


def _rows(n_full: int, n_under: int) -> list[dict]:
    rows = []
    for i in range(n_full + n_under):
        prompt = [{"role": "user", "content": f"prompt {i}"}]
        rows.append({"source": "run", "prompt": prompt, "fully_specified": i < n_full})
    return rows


def test_select_rows_dedupes_balances_and_is_seeded():
    rows = _rows(10, 30) + _rows(10, 30)  # every prompt twice
    picked = select_rows(rows, Recipe(underspecified_share=0.5))
    assert len(picked) == 20 and sum(not r["fully_specified"] for r in picked) == 10
    assert picked == select_rows(rows, Recipe(underspecified_share=0.5))
    assert picked != select_rows(rows, Recipe(underspecified_share=0.5, seed=1))
    keep = select_rows(rows, Recipe(underspecified_share=None))
    assert len(keep) == 40
    quarter = select_rows(_rows(12, 30), Recipe(underspecified_share=0.25))
    assert sum(not r["fully_specified"] for r in quarter) == 4 and len(quarter) == 16
    only_run = select_rows(rows, Recipe(sources=["run"], max_prompts=7))
    assert len(only_run) == 7
    with pytest.raises(IcpoError):
        select_rows(rows, Recipe(sources=["augment"]))


@pytest.mark.slow
def test_two_training_steps_make_a_checkpoint_the_harness_runs(tmp_path):
    from icpo_eval.train import train

    run_dir = make_scripted_run(tmp_path)
    data, _ = export_run(run_dir, tmp_path / "export", "hf", augment=True)
    recipe = load_recipe(ROOT / "train" / "smollm2-cpu.yaml")
    recipe.data = str(data)
    recipe.output_dir = str(tmp_path / "ckpt")
    recipe.max_steps = 2
    recipe.num_generations = 2
    recipe.per_device_train_batch_size = 4
    recipe.max_completion_length = 16
    # A limit between the shortest and the longest prompt must drop some prompts, not all.
    from transformers import AutoTokenizer

    from icpo_eval.export import load_export
    from icpo_eval.models.local import smollm2_checkpoint
    from icpo_eval.train import prompt_tokens

    tok = AutoTokenizer.from_pretrained(str(smollm2_checkpoint()))
    lengths = sorted({prompt_tokens(tok, r["prompt"]) for r in load_export(data)})
    assert len(lengths) > 2 and lengths[0] > 50  # the system prompt alone is ~80 tokens
    recipe.max_prompt_tokens = lengths[len(lengths) // 2]
    recipe.underspecified_share = None
    unique = len({json.dumps([r["prompt"], r["fully_specified"]]) for r in load_export(data)})
    out = train(recipe)

    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2]
    for e in log:
        assert e["icpo/step_seconds"] > 0 and 0 <= e["icpo/reward_time_share"] < 1
        assert "entropy" in e and ("icpo/reward_fully" in e or "icpo/reward_under" in e)
    summary = json.loads((out / "icpo_train.json").read_text())
    assert summary["steps"] == 2 and summary["recipe"]["loss_type"] == "dapo"
    assert 0 < summary["prompts"] < unique

    model = f"hf/{out}"
    spec = RunSpec(
        model=model,
        tasks=str(tmp_path / "tasks.jsonl"),
        modes=["full"],
        max_new_tokens=16,
        out=str(tmp_path / "eval"),
    )
    run(spec, progress=False)
    _, convs = load_run(tmp_path / "eval")
    assert len(convs) == 2 and all(c.model == model and c.error is None for c in convs)
    assert all(c.assistant_turns[0].tokens_out > 0 for c in convs)
