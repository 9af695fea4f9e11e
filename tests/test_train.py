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


PAD = 0


def _reward(prompt, texts, fully, ids=None):
    fn = IcpoReward("rule", [EOS], PAD)
    values: dict[str, list[float]] = {}
    out = fn(
        prompts=[prompt] * len(texts),
        completions=[[{"role": "assistant", "content": t}] for t in texts],
        fully_specified=[fully] * len(texts),
        instruction=[INST] * len(texts),
        completion_ids=ids or [[5, EOS]] * len(texts),
        log_metric=lambda name, value: values.setdefault(name, []).append(value),
    )
    # What TRL logs: the mean of every value logged in the step (over all processes).
    logged = {name: sum(v) / len(v) for name, v in values.items()}
    _reward.values = values  # type: ignore[attr-defined]
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
    assert _reward(UNDER_PROMPT, [text], False, [[7] * 10 + [PAD]])[0] == [1.0]
    # TRL's rule (mask_truncated_completions): a last token that is neither an end token nor
    # padding is a cut, whatever the length (a stop other than EOS, a shorter limit).
    assert _reward(UNDER_PROMPT, [text], False, [[7] * 10])[0] == [0.0]


def test_step_statistics_pool_completions_and_leave_out_truncated_ones():
    text = NON_ANSWERS["discussion"]
    rewards, logged = _reward(UNDER_PROMPT, [text, text, GUESS], False, [[7], [7, EOS], [7, EOS]])
    assert rewards == [0.0, 1.0, 0.0]
    assert logged["icpo/non_answer_under"] == pytest.approx(1 / 3)  # the cut one is not held
    # Two processes with batches of 1 and 3: TRL averages every value any process logged, so
    # one value per completion pools them: 2 non-answers of 4, not (1/1 + 1/3) / 2.
    _reward(UNDER_PROMPT, [text], False)
    first = _reward.values["icpo/non_answer_under"]  # type: ignore[attr-defined]
    _reward(UNDER_PROMPT, [text, GUESS, GUESS], False)
    second = _reward.values["icpo/non_answer_under"]  # type: ignore[attr-defined]
    gathered = first + second
    assert sum(gathered) / len(gathered) == pytest.approx(2 / 4)
    stats = step_stats([0.0, 1.0], ["discussion", "discussion"], [False, False], [True, False])
    assert stats["icpo/non_answer_under"] == 0.5
    # A trivial reply keeps its category but is no non-answer in the statistics either.
    rewards, logged = _reward(UNDER_PROMPT, ["What?", text], False)
    assert rewards == [0.0, 1.0] and logged["icpo/non_answer_under"] == 0.5


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
    assert (r.num_generations, r.learning_rate, r.max_steps) == (8, 1e-6, 600)
    assert r.beta > 0  # KL on
    # GRPO as verl runs it: token-mean loss, low-variance KL without bias correction, no vLLM
    # importance reweighting; the paper's q / q* prompts only.
    assert (r.loss_type, r.kl_estimator, r.kl_bias_correction) == ("dapo", "low_var_kl", False)
    assert r.vllm_importance_sampling_correction is False and r.sources == ["augment"]
    assert r.bf16 is True
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
        ("kl_estimator: k2\n", ["kl_estimator", "low_var_kl"]),
        ("kl_bias_correction: maybe\n", ["kl_bias_correction", "bool"]),
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
    from icpo_eval.tasksets import write_jsonl

    # Evaluated on instructions it was not trained on: its own (t1, t2) are refused.
    trained_on = RunSpec(model=model, tasks=str(tmp_path / "tasks.jsonl"), out=str(tmp_path / "x"))
    with pytest.raises(IcpoError, match="training data"):
        run(trained_on, progress=False)
    write_jsonl([make_math("t3", "8"), make_math("t4", "9")], tmp_path / "heldout.jsonl")
    spec = RunSpec(
        model=model,
        tasks=str(tmp_path / "heldout.jsonl"),
        modes=["full"],
        max_new_tokens=16,
        out=str(tmp_path / "eval"),
    )
    run(spec, progress=False)
    _, convs = load_run(tmp_path / "eval")
    assert len(convs) == 2 and all(c.model == model and c.error is None for c in convs)
    assert all(c.assistant_turns[0].tokens_out > 0 for c in convs)


def test_the_group_check_counts_every_process():
    """TRL needs per-device batch × processes × accumulation to hold whole groups."""
    r = Recipe(num_generations=8, per_device_train_batch_size=4, gradient_accumulation_steps=1)
    r.check(num_processes=2)  # 4 × 2 × 1 = 8 completions: one group
    with pytest.raises(IcpoError, match="multiple of num_generations"):
        r.check(num_processes=1)


def test_a_checkpoint_is_not_evaluated_on_what_it_was_trained_on(tmp_path, capsys):
    from icpo_eval.cli import main
    from icpo_eval.tasksets import write_jsonl

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "icpo_train.json").write_text(json.dumps({"train_task_ids": ["t1"]}))
    tasks = tmp_path / "tasks.jsonl"
    write_jsonl([make_math("t1", "8"), make_math("t2", "9")], tasks)
    argv = ["run", "--model", f"hf/{ckpt}", "--tasks", str(tasks), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "1 of 2 instructions (first: t1)" in err
    assert not (tmp_path / "o").exists()  # refused before anything was written
    # Held-out instructions pass the check (the run then fails on the fake checkpoint).
    write_jsonl([make_math("t2", "9")], tasks)
    assert main(argv) == 2
    assert "training data" not in capsys.readouterr().err
    write_jsonl([make_math("t1", "8")], tasks)
    assert main([*argv, "--allow-train-overlap"]) == 2
    assert "training data" not in capsys.readouterr().err


def test_the_training_config_exists_before_the_model_is_built(tmp_path, monkeypatch):
    """Under ZeRO-3 the config is what makes from_pretrained build the model sharded."""
    pytest.importorskip("trl")
    import transformers

    import icpo_eval.train as train_mod

    order: list[str] = []
    real_config = train_mod.grpo_config

    def config(*a, **k):
        order.append("config")
        return real_config(*a, **k)

    class Stop(Exception):
        pass

    def from_pretrained(path, dtype=None, **k):
        order.append(f"model {dtype}")
        raise Stop

    monkeypatch.setattr(train_mod, "grpo_config", config)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    run_dir = make_scripted_run(tmp_path)
    data, _ = export_run(run_dir, tmp_path / "export", "hf", augment=True)
    recipe = load_recipe(ROOT / "train" / "smollm2-cpu.yaml")
    recipe.data, recipe.output_dir, recipe.bf16 = str(data), str(tmp_path / "ckpt"), True
    with pytest.raises(Stop):
        train_mod.train(recipe)
    assert order == ["config", "model torch.float32"]  # fp32 weights even with bf16: true


def _budget_worker(rank: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0")  # unused: a file rendezvous
    from accelerate import PartialState

    from icpo_eval.train import budget_spent

    # A file rendezvous (no port to race for), then accelerate adopts the process group.
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    PartialState(cpu=True, backend="gloo")
    # The clocks disagree: rank 1 is past the budget, the main process is not (and the reverse).
    first = budget_spent(10.0 if rank == 1 else 1.0, 5.0)
    second = budget_spent(10.0 if rank == 0 else 1.0, 5.0)
    Path(out, f"rank{rank}").write_text(json.dumps([first, second]))
    dist.barrier()
    dist.destroy_process_group()


def test_the_time_budget_is_decided_once_for_every_process(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_budget_worker, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    decisions = [json.loads((tmp_path / f"rank{r}").read_text()) for r in (0, 1)]
    assert decisions == [[False, True], [False, True]]  # the main process's clock, everywhere


@pytest.mark.slow
def test_bf16_trains_fp32_weights_that_move_at_the_papers_learning_rate(tmp_path, monkeypatch):
    """`bf16: true` is autocast over fp32 weights: two steps at lr 1e-6 change most weights,
    the norm weights near 1.0 included (bf16 weights there have a resolution of 2^-7, so a
    1e-6 step would round away), and the checkpoint keeps use_cache on."""
    from safetensors.torch import load_file

    from icpo_eval.models.local import smollm2_checkpoint
    from icpo_eval.train import train

    # Rewards that differ within every group (0, 1, 0, 1 by position: a group's completions
    # are consecutive), so that advantages, and with them gradients, are never all zero; the
    # ICPO reward itself is tested above. (By completion length they tied whenever every
    # completion ran to the 16-token cap.)
    def varied(self, prompts, completions, completion_ids=None, **_):
        return [float(i % 2) for i in range(len(completion_ids))]

    monkeypatch.setattr(IcpoReward, "__call__", varied)
    run_dir = make_scripted_run(tmp_path)
    data, _ = export_run(run_dir, tmp_path / "export", "hf", augment=True)
    recipe = load_recipe(ROOT / "train" / "smollm2-cpu.yaml")
    recipe.data, recipe.output_dir = str(data), str(tmp_path / "ckpt")
    recipe.bf16, recipe.learning_rate, recipe.max_steps = True, 1e-6, 2
    recipe.num_generations, recipe.per_device_train_batch_size = 4, 4
    recipe.max_completion_length, recipe.temperature = 16, 1.0
    out = train(recipe)

    summary = json.loads((out / "icpo_train.json").read_text())
    assert summary["precision"] == {"weights": "float32", "autocast": "bf16"}
    assert summary["train_task_ids"] == ["t1", "t2"]
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    before = load_file(str(smollm2_checkpoint() / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert all(
        t.dtype.is_floating_point and str(t.dtype) == "torch.float32" for t in after.values()
    )
    changed = sum(int((after[k] != before[k]).sum()) for k in after)
    total = sum(t.numel() for t in after.values())
    norms = [k for k in after if k.endswith("norm.weight")]
    norm_changed = sum(int((after[k] != before[k]).sum()) for k in norms)
    norm_total = sum(after[k].numel() for k in norms)
    print(f"changed: {changed / total:.1%} of weights, {norm_changed / norm_total:.1%} of norms")
    assert changed / total > 0.5 and norm_changed / norm_total > 0.5
