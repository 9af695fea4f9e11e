"""The bundled ICPO trainer: GRPO-family RL on TRL, rewarded by the harness's own judges.

ICPO (arXiv 2601.15330) keeps GRPO and changes the reward: on a fully specified prompt it is the
evaluator's correctness score; on an underspecified one it is 1 when the model does not commit
to an answer (it asks, discusses, hedges or declines) and 0 when it guesses. Here that reward is
:func:`icpo_eval.judges.judge_reply`, the very function the conversation loop uses to judge a
turn, so a policy is trained on exactly what the harness measures.

Data is an export (``icpo-eval export``, any format): each row's ``prompt`` (chat messages up to
an assistant turn), ``fully_specified`` and ``instruction`` (the evaluator's reference). GRPO
samples ``num_generations`` completions per prompt and rewards each.

A recipe (YAML, ``train/*.yaml``) sets every trainer knob explicitly, because TRL's defaults
have moved between releases (``loss_type``, ``beta``, ``scale_rewards`` ...); the trainer is
pinned to TRL 1.16 (``pip install -e '.[train]'``).

Logged each step (stdout and ``train_log.jsonl`` in the output directory): the reward split by
fully specified and underspecified prompts, the non-answer rate on underspecified prompts, the
over-clarification rate on fully specified ones, KL (when ``beta`` > 0), entropy, step time and
the share of it spent computing rewards.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from icpo_eval.errors import IcpoError
from icpo_eval.families import get_family
from icpo_eval.judges import get_judge, judge_reply
from icpo_eval.records import NON_ANSWERS, Instruction

TRL_VERSION = "1.16.0"
LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo")
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "icpo_train.json"


@dataclass
class Recipe:
    """Every knob of an ICPO run. Field comments say what TRL calls them."""

    model: str = "local/smollm2"  # or hf/<checkpoint path>
    data: str | None = None  # export directory
    output_dir: str = "checkpoints/icpo"
    judge: str = "rule"
    seed: int = 0
    # -- data selection ------------------------------------------------------------------
    sources: list[str] = field(default_factory=lambda: ["run", "augment"])
    #: Resample so that this share of prompts is underspecified (None: keep the export's mix).
    underspecified_share: float | None = 0.5
    #: Drop prompts longer than this many tokens (chat template included); None keeps all.
    max_prompt_tokens: int | None = None
    #: Keep at most this many prompts after balancing (None: all).
    max_prompts: int | None = None
    # -- GRPO ------------------------------------------------------------------------------
    num_generations: int = 8  # G, completions per prompt
    per_device_train_batch_size: int = 8  # completions per device per micro-batch
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int = 100
    #: Wall-clock budget: training stops after the step that crosses it (None: no budget).
    max_minutes: float | None = None
    loss_type: str = "dapo"
    epsilon: float = 0.2  # lower clip
    epsilon_high: float | None = None  # upper clip (DAPO's clip-higher); None = epsilon
    beta: float = 0.0  # KL coefficient; > 0 loads a reference model
    scale_rewards: str = "group"  # "group", "batch" or "none" (Dr. GRPO)
    num_iterations: int = 1  # policy updates per generation batch (mu)
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    # -- infrastructure ------------------------------------------------------------------
    save_steps: int = 0  # 0: only the final checkpoint
    logging_steps: int = 1
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    bf16: bool = False
    gradient_checkpointing: bool = False

    @property
    def model_path(self) -> str:
        if self.model == "local/smollm2":
            from icpo_eval.models.local import smollm2_checkpoint

            return str(smollm2_checkpoint())
        if self.model.startswith("hf/") and len(self.model) > 3:
            return self.model[3:]
        raise IcpoError(f"recipe model {self.model!r}: use local/smollm2 or hf/<checkpoint path>")

    def check(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise IcpoError(f"loss_type {self.loss_type!r}: one of {', '.join(LOSS_TYPES)}")
        if self.num_generations < 2:
            raise IcpoError("num_generations must be at least 2 (GRPO compares a group)")
        total = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if total % self.num_generations:
            raise IcpoError(
                f"per_device_train_batch_size × gradient_accumulation_steps ({total}) must be a "
                f"multiple of num_generations ({self.num_generations})"
            )
        if self.underspecified_share is not None and not 0 < self.underspecified_share < 1:
            raise IcpoError("underspecified_share must be between 0 and 1 (exclusive) or null")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise IcpoError(f"scale_rewards {self.scale_rewards!r}: group, batch or none")
        if self.max_minutes is not None and (
            not isinstance(self.max_minutes, (int, float)) or self.max_minutes <= 0
        ):
            raise IcpoError(
                f"max_minutes must be a positive number or null, got {self.max_minutes!r}"
            )
        bad = [s for s in self.sources if s not in ("run", "augment")]
        if bad or not self.sources:
            raise IcpoError(f"sources must be a non-empty subset of [run, augment], got {bad}")


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise IcpoError(f"recipe not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise IcpoError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise IcpoError(f"{p}: expected a mapping of recipe keys")
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise IcpoError(f"{p}: unknown recipe key(s) {', '.join(unknown)}")
    defaults = Recipe()
    for key, value in data.items():
        want = type(getattr(defaults, key))
        if value is None or getattr(defaults, key) is None:
            continue
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            data[key] = float(value)
        elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise IcpoError(f"{p}: {key} must be {want.__name__}, got {value!r}")
    recipe = Recipe(**data)
    recipe.check()
    return recipe


# --------------------------------------------------------------------------------------------
# The reward
# --------------------------------------------------------------------------------------------


class IcpoReward:
    """TRL reward function: the ICPO reward of each completion, from the harness's judges.

    TRL calls it with the batch's prompts and completions plus every dataset column as a list
    (``fully_specified``, ``instruction``), and ``completion_ids`` from which truncation is
    read: a completion that used all ``max_completion_length`` tokens without an end token is
    truncated, and a truncated reply never earns the non-answer reward.
    """

    __name__ = "icpo"

    def __init__(self, judge: str, eos_ids: list[int], max_completion_length: int):
        self.judge = get_judge(judge)
        self.eos_ids = set(eos_ids)
        self.max_completion_length = max_completion_length
        self._instructions: dict[str, Instruction] = {}
        self.seconds = 0.0  # time spent in this function since the last reset

    def instruction(self, payload: str) -> Instruction:
        inst = self._instructions.get(payload)
        if inst is None:
            inst = Instruction.from_dict(json.loads(payload), where="export row")
            self._instructions[payload] = inst
        return inst

    def truncated(self, ids: list[int] | None) -> bool:
        if not ids:
            return False
        return len(ids) >= self.max_completion_length and ids[-1] not in self.eos_ids

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        fully_specified: list[bool],
        instruction: list[str],
        completion_ids: list[list[int]] | None = None,
        log_metric: Any = None,
        **_: Any,
    ) -> list[float]:
        start = time.perf_counter()
        rewards, categories = [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            inst = self.instruction(instruction[i])
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            history = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            trunc = self.truncated(completion_ids[i] if completion_ids else None)
            v = judge_reply(
                inst, get_family(inst.task), self.judge, text, history, fully_specified[i], trunc
            )
            rewards.append(v.reward)
            categories.append(v.category)
        self.seconds += time.perf_counter() - start
        if log_metric is not None:
            for name, value in step_stats(rewards, categories, fully_specified).items():
                log_metric(name, value)
        return rewards


def step_stats(
    rewards: list[float], categories: list[str], fully_specified: list[bool]
) -> dict[str, float]:
    """The calibration view of one batch of rewarded completions."""
    full = [i for i, f in enumerate(fully_specified) if f]
    under = [i for i, f in enumerate(fully_specified) if not f]
    out: dict[str, float] = {}
    if full:
        out["icpo/reward_fully"] = sum(rewards[i] for i in full) / len(full)
        out["icpo/over_clarification"] = sum(categories[i] in NON_ANSWERS for i in full) / len(full)
    if under:
        out["icpo/reward_under"] = sum(rewards[i] for i in under) / len(under)
        out["icpo/non_answer_under"] = sum(categories[i] in NON_ANSWERS for i in under) / len(under)
    return out


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def select_rows(
    rows: list[dict[str, Any]], recipe: Recipe, count_tokens: Any = None
) -> list[dict[str, Any]]:
    """The training prompts: unique, filtered, balanced and shuffled with the recipe's seed."""
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["source"] not in recipe.sources:
            continue
        key = json.dumps([row["prompt"], bool(row["fully_specified"])], sort_keys=True)
        if key in seen:  # greedy runs repeat prompts; one copy is enough for GRPO
            continue
        seen.add(key)
        if recipe.max_prompt_tokens and count_tokens is not None:
            if count_tokens(row["prompt"]) > recipe.max_prompt_tokens:
                continue
        unique.append(row)
    rng = random.Random(recipe.seed)
    full = [r for r in unique if r["fully_specified"]]
    under = [r for r in unique if not r["fully_specified"]]
    share = recipe.underspecified_share
    if share is not None and full and under:
        # Downsample the larger side to reach the share (never duplicate prompts).
        want_under = round(len(full) * share / (1 - share))
        if want_under <= len(under):
            under = rng.sample(under, want_under)
        else:
            full = rng.sample(full, round(len(under) * (1 - share) / share))
    picked = full + under
    rng.shuffle(picked)
    if recipe.max_prompts:
        picked = picked[: recipe.max_prompts]
    if not picked:
        raise IcpoError("no training prompts left after selection (check sources and limits)")
    return picked


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def prompt_tokens(tok: Any, messages: list[dict[str, str]]) -> int:
    """Length in tokens of a chat prompt as the policy sees it (template and generation cue)."""
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _trl() -> Any:
    try:
        import trl
    except ImportError:
        raise IcpoError("the trainer needs TRL: pip install -e '.[train]'") from None
    if trl.__version__ != TRL_VERSION:
        print(
            f"warning: icpo-eval's trainer is tested with trl=={TRL_VERSION}, "
            f"found {trl.__version__}",
            file=sys.stderr,
        )
    return trl


def grpo_config(recipe: Recipe, use_cpu: bool) -> Any:
    """TRL's GRPOConfig with every setting that matters written out (no silent defaults)."""
    trl = _trl()
    return trl.GRPOConfig(
        output_dir=recipe.output_dir,
        seed=recipe.seed,
        data_seed=recipe.seed,
        max_steps=recipe.max_steps,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_steps=recipe.warmup_steps,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        steps_per_generation=recipe.gradient_accumulation_steps,
        num_generations=recipe.num_generations,
        num_iterations=recipe.num_iterations,
        max_completion_length=recipe.max_completion_length,
        temperature=recipe.temperature,
        top_p=recipe.top_p,
        top_k=recipe.top_k,
        repetition_penalty=1.0,
        loss_type=recipe.loss_type,
        epsilon=recipe.epsilon,
        epsilon_high=recipe.epsilon_high,
        beta=recipe.beta,
        scale_rewards=recipe.scale_rewards,
        importance_sampling_level="token",
        mask_truncated_completions=False,  # truncation is handled by the reward instead
        disable_dropout=True,
        shuffle_dataset=True,
        remove_unused_columns=False,
        use_vllm=recipe.use_vllm,
        vllm_mode=recipe.vllm_mode,
        bf16=recipe.bf16,
        fp16=False,
        use_cpu=use_cpu,
        # TRL turns checkpointing on by default; transformers 5 renamed it. Set both names.
        activation_checkpointing=recipe.gradient_checkpointing,
        gradient_checkpointing=recipe.gradient_checkpointing,
        logging_steps=recipe.logging_steps,
        save_strategy="steps" if recipe.save_steps else "no",
        save_steps=recipe.save_steps or 500,
        save_only_model=True,
        report_to="none",
        log_completions=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _callback(reward: IcpoReward, log_path: Path, max_minutes: float | None) -> Any:
    from transformers import TrainerCallback

    class IcpoLog(TrainerCallback):
        """Step wall time, the reward's share of it, and one JSON line per log event."""

        def __init__(self) -> None:
            self.train_start = time.perf_counter()
            self.step_start = 0.0
            self.step_seconds: list[float] = []
            self.reward_seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.step_start = time.perf_counter()
            reward.seconds = 0.0

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.step_seconds.append(time.perf_counter() - self.step_start)
            self.reward_seconds.append(reward.seconds)
            if (
                max_minutes is not None
                and time.perf_counter() - self.train_start > max_minutes * 60
            ):
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not logs or "train_runtime" in logs or not state.is_world_process_zero:
                return  # one log line per step, from the main process only
            entry = {"step": state.global_step, **logs}
            if self.step_seconds:
                wall, rew = sum(self.step_seconds), sum(self.reward_seconds)
                entry["icpo/step_seconds"] = wall / len(self.step_seconds)
                entry["icpo/reward_time_share"] = rew / wall if wall else 0.0
                self.step_seconds, self.reward_seconds = [], []
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
            print(format_log(entry), flush=True)

    return IcpoLog()


def format_log(e: dict[str, Any]) -> str:
    def f(key: str, fmt: str = ".2f") -> str:
        v = e.get(key)
        return "-" if v is None else format(v, fmt)

    return (
        f"step {e['step']:>4}  reward {f('reward')} (fully {f('icpo/reward_fully')}, "
        f"under {f('icpo/reward_under')})  non-answer|under {f('icpo/non_answer_under')}  "
        f"over-clar|fully {f('icpo/over_clarification')}  kl {f('kl', '.4f')}  "
        f"entropy {f('entropy')}  step {f('icpo/step_seconds', '.1f')}s  "
        f"reward share {f('icpo/reward_time_share', '.2%')}"
    )


def train(recipe: Recipe) -> Path:
    """Run ICPO training; return the directory of the final checkpoint."""
    from icpo_eval.export import load_export

    recipe.check()
    if not recipe.data:
        raise IcpoError("no training data: set `data:` in the recipe or pass --data DIR")
    rows = load_export(recipe.data)
    trl = _trl()
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    path = recipe.model_path
    if not Path(path).exists():
        raise IcpoError(f"model checkpoint not found: {path}")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    picked = select_rows(rows, recipe, lambda messages: prompt_tokens(tok, messages))
    n_under = sum(not r["fully_specified"] for r in picked)
    print(
        f"training prompts: {len(picked)} ({len(picked) - n_under} fully specified, "
        f"{n_under} underspecified) from {len(rows)} export rows"
    )
    columns = ("prompt", "fully_specified", "instruction", "family", "task_id")
    dataset = datasets.Dataset.from_list([{k: r[k] for k in columns} for r in picked])

    use_cpu = not torch.cuda.is_available()
    dtype = torch.bfloat16 if recipe.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tok.eos_token_id is not None:
        eos_ids.append(tok.eos_token_id)
    reward = IcpoReward(recipe.judge, eos_ids, recipe.max_completion_length)
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_FILE
    log_path.unlink(missing_ok=True)
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=grpo_config(recipe, use_cpu),
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[_callback(reward, log_path, recipe.max_minutes)],
    )
    trainer.remove_callback(PrinterCallback)  # our callback prints one line per step instead
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(str(out))  # collective under DeepSpeed ZeRO-3: every process calls it
    if not trainer.is_world_process_zero():
        return out
    tok.save_pretrained(str(out))
    summary = {
        "recipe": dataclasses.asdict(recipe),
        "trl": trl.__version__,
        "prompts": len(picked),
        "underspecified_prompts": n_under,
        "steps": result.global_step,
        "train_seconds": round(seconds, 1),
        "training_loss": result.training_loss,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return out
