"""The bundled ICPO trainer: GRPO-family RL on TRL, rewarded by the harness's own judges.

ICPO (arXiv 2601.15330) keeps GRPO and changes the reward: on a fully specified prompt it is the
evaluator's correctness score; on an underspecified one it is 1 when the model does not commit
to an answer (it asks, discusses, hedges or declines) and 0 when it guesses. Here that reward is
:func:`icpo_eval.reward.judge_reply`, the very function the conversation loop uses to judge a
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
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from icpo_eval.errors import IcpoError
from icpo_eval.families import get_family
from icpo_eval.judges import get_judge, states_number_in_words
from icpo_eval.records import NON_ANSWERS, Instruction
from icpo_eval.reward import judge_reply

TRL_VERSION = "1.16.0"
LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo")
KL_ESTIMATORS = ("low_var_kl",)
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
    # -- rollouts ----------------------------------------------------------------------------
    #: ``single``: one completion per exported prompt (the paper's q / q* training).
    #: ``conversation``: the policy plays whole conversations against the simulator
    #: (:mod:`icpo_eval.rollout`; train/README.md says how turn rewards become the advantage).
    rollout: str = "single"
    #: Conversation rollouts: the training instructions (``--tasks`` syntax: a family name or a
    #: task file); None takes the instructions of the export in ``data``.
    tasks: str | None = None
    #: Conversation rollouts: the modes each instruction is played in (one GRPO group per
    #: instruction and mode).
    conversation_modes: list[str] = field(default_factory=lambda: ["sharded", "full"])
    #: Conversation rollouts: the turn cap (None: the harness's, shards + 2).
    max_turns: int | None = None
    #: Conversation rollouts: the user simulator (``rule`` or ``llm:MODEL``).
    simulator: str = "rule"
    #: Conversation rollouts: conversations decoded together (the local backend's batch).
    rollout_batch_size: int = 16
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
    #: How token losses are aggregated (TRL ``loss_type``). ``dapo``: the mean over every active
    #: token of the global accumulated batch, which is verl's ``loss_agg_mode: token-mean``;
    #: ``grpo``: a mean per sequence, then over sequences (the original GRPO; length-biased).
    loss_type: str = "dapo"
    epsilon: float = 0.2  # lower clip
    epsilon_high: float | None = None  # upper clip (DAPO's clip-higher); None = epsilon
    beta: float = 0.0  # KL coefficient; > 0 loads a reference model
    #: The KL estimator. TRL computes one, k3 = exp(ref - logp) - (ref - logp) - 1, which is
    #: verl's ``kl_loss_type: low_var_kl`` (verl also clamps it to [-10, 10]); named here so that
    #: a recipe says which it means.
    kl_estimator: str = "low_var_kl"
    #: Multiply the KL term by the importance ratio (TRL ``use_bias_correction_kl``, on by
    #: default in TRL 1.16; DeepSeek-V3.2's unbiased KL). verl's GRPO does not: off.
    kl_bias_correction: bool = False
    #: With vLLM: reweight by the vLLM/trainer probability ratio (TRL
    #: ``vllm_importance_sampling_correction``, on by default in TRL 1.16). verl's GRPO does not.
    vllm_importance_sampling_correction: bool = False
    scale_rewards: str = "group"  # "group", "batch" or "none" (Dr. GRPO)
    num_iterations: int = 1  # policy updates per generation batch (mu)
    #: Tokens of one completion; in conversation rollouts, of one assistant turn.
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    # -- infrastructure ------------------------------------------------------------------
    save_steps: int = 0  # 0: only the final checkpoint
    logging_steps: int = 1
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    #: bf16 autocast for the forward and backward passes; the weights the optimizer updates stay
    #: fp32 whatever the launcher (DDP or ZeRO), so that small updates (lr 1e-6) are not lost
    #: below bf16's resolution.
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

    def check(self, num_processes: int | None = None) -> None:
        """Refuse a recipe TRL would refuse or that does not mean what it says, with one line.

        ``num_processes``: the processes training together (GPUs under accelerate; default: the
        launcher's ``WORLD_SIZE``, else 1). A generation batch (``per_device_train_batch_size``
        × processes × ``gradient_accumulation_steps`` completions) must hold whole groups of
        ``num_generations``, as TRL requires.
        """
        if num_processes is None:
            num_processes = int(os.environ.get("WORLD_SIZE") or 1)
        if self.loss_type not in LOSS_TYPES:
            raise IcpoError(f"loss_type {self.loss_type!r}: one of {', '.join(LOSS_TYPES)}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise IcpoError(
                f"kl_estimator {self.kl_estimator!r}: TRL computes only {', '.join(KL_ESTIMATORS)}"
            )
        if self.num_generations < 2:
            raise IcpoError("num_generations must be at least 2 (GRPO compares a group)")
        total = self.per_device_train_batch_size * num_processes * self.gradient_accumulation_steps
        if total % self.num_generations:
            raise IcpoError(
                f"per_device_train_batch_size × processes × gradient_accumulation_steps ({total}) "
                f"must be a multiple of num_generations ({self.num_generations})"
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
        if self.rollout not in ("single", "conversation"):
            raise IcpoError(f"rollout {self.rollout!r}: single or conversation")
        if self.rollout == "conversation":
            from icpo_eval.rollout import ROLLOUT_MODES

            bad_modes = [m for m in self.conversation_modes if m not in ROLLOUT_MODES]
            if bad_modes or not self.conversation_modes:
                raise IcpoError(
                    f"conversation_modes must be a non-empty subset of {list(ROLLOUT_MODES)}, "
                    f"got {self.conversation_modes}"
                )
            if self.top_k:
                raise IcpoError("conversation rollouts sample with top_p only: set top_k: 0")
            if self.use_vllm:
                raise IcpoError("conversation rollouts generate with the local backend: use_vllm")
            if self.max_turns is not None and self.max_turns < 1:
                raise IcpoError("max_turns must be at least 1 or null")
            if self.rollout_batch_size < 1:
                raise IcpoError("rollout_batch_size must be at least 1")
        bad = [s for s in self.sources if s not in ("run", "augment")]
        if bad or not self.sources:
            raise IcpoError(f"sources must be a non-empty subset of [run, augment], got {bad}")


def training_task_ids(checkpoint: str | Path) -> set[str] | None:
    """The task ids an ICPO checkpoint was trained on (its ``icpo_train.json``); None for a
    checkpoint this trainer did not write."""
    path = Path(checkpoint) / SUMMARY_FILE
    try:
        ids = json.loads(path.read_text(encoding="utf-8")).get("train_task_ids")
    except (OSError, ValueError, AttributeError):
        return None
    return {str(i) for i in ids} if isinstance(ids, list) else None


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
    read by TRL's own rule (``mask_truncated_completions``): a completion whose last token is
    neither an end token nor padding was cut off; a truncated reply never earns the non-answer
    reward.

    The step statistics go to TRL's ``log_metric`` one value per completion, so that TRL's
    average over the values of all processes is the pooled share over every completion of the
    step (one value per process would average per-process means of unequal batches).
    """

    __name__ = "icpo"

    def __init__(self, judge: str, eos_ids: list[int], pad_id: int | None = None):
        self.judge = get_judge(judge)
        self.end_ids = set(eos_ids) | ({pad_id} if pad_id is not None else set())
        self._instructions: dict[str, Instruction] = {}
        self.seconds = 0.0  # time spent in this function since the last reset

    def instruction(self, payload: str) -> Instruction:
        inst = self._instructions.get(payload)
        if inst is None:
            inst = Instruction.from_dict(json.loads(payload), where="export row")
            self._instructions[payload] = inst
        return inst

    def truncated(self, ids: list[int] | None) -> bool:
        """TRL's rule: the last token is neither an end token nor padding (no ids: unknown)."""
        if not ids:
            return False
        return ids[-1] not in self.end_ids

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
        rewards, categories, unpaid, words = [], [], [], []
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
            unpaid.append(trunc or v.withheld is not None)
            words.append(states_number_in_words(text))
        self.seconds += time.perf_counter() - start
        if log_metric is not None:
            for name, values in step_values(rewards, categories, fully_specified, unpaid, words):
                for value in values:
                    log_metric(name, value)
        return rewards


def step_values(
    rewards: list[float],
    categories: list[str],
    fully_specified: list[bool],
    unpaid: list[bool] | None = None,
    words: list[bool] | None = None,
) -> list[tuple[str, list[float]]]:
    """The calibration view of one batch of rewarded completions, one value per completion:
    rewards and non-answers split by fully specified and underspecified prompts. ``unpaid``
    marks the replies that are no non-answer whatever their category: cut off (truncated), or
    withheld by the reward's integrity rule (trivial, off-task; ``reward.withheld_reason``).
    ``words`` marks the replies that state a number in words
    (:func:`~icpo_eval.judges.states_number_in_words`); ``icpo/non_answer_number_words`` is
    their share among the non-answers, a quantity the judge may have missed."""
    cut = unpaid or [False] * len(rewards)
    held = [c in NON_ANSWERS and not t for c, t in zip(categories, cut)]
    full = [i for i, f in enumerate(fully_specified) if f]
    under = [i for i, f in enumerate(fully_specified) if not f]
    out: list[tuple[str, list[float]]] = []
    if full:
        out.append(("icpo/reward_fully", [rewards[i] for i in full]))
        out.append(("icpo/over_clarification", [float(held[i]) for i in full]))
    if under:
        out.append(("icpo/reward_under", [rewards[i] for i in under]))
        out.append(("icpo/non_answer_under", [float(held[i]) for i in under]))
    if words is not None and any(held):
        spelled = [float(w) for w, h in zip(words, held) if h]
        out.append(("icpo/non_answer_number_words", spelled))
    return out


def step_stats(
    rewards: list[float],
    categories: list[str],
    fully_specified: list[bool],
    unpaid: list[bool] | None = None,
    words: list[bool] | None = None,
) -> dict[str, float]:
    """:func:`step_values` as means (what TRL logs for one process's batch)."""
    values = step_values(rewards, categories, fully_specified, unpaid, words)
    return {name: sum(v) / len(v) for name, v in values}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


# The prompt selection is shared with the verl export: it lives in icpo_eval.selection.
from icpo_eval.selection import select_rows  # noqa: E402, F401

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
        use_bias_correction_kl=recipe.kl_bias_correction,
        vllm_importance_sampling_correction=recipe.vllm_importance_sampling_correction,
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
            if max_minutes is not None:
                elapsed = time.perf_counter() - self.train_start
                if budget_spent(elapsed, max_minutes * 60):
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


def budget_spent(elapsed_s: float, budget_s: float) -> bool:
    """Whether the time budget is spent, as the main process's clock says, on every process.

    Each process measures its own elapsed time; were each to decide alone, one could stop a
    step before the others and leave them waiting forever in the next step's collective. The
    main process decides and tells the others (a collective: every process calls this at the
    end of every step).
    """
    spent = elapsed_s > budget_s
    from accelerate import PartialState

    if PartialState().num_processes > 1:
        from accelerate.utils import broadcast_object_list

        decision = [spent]
        broadcast_object_list(decision, from_process=0)
        spent = bool(decision[0])
    return spent


def format_log(e: dict[str, Any]) -> str:
    def f(key: str, fmt: str = ".2f") -> str:
        v = e.get(key)
        return "-" if v is None else format(v, fmt)

    tail = (
        f"words|non-answer {f('icpo/non_answer_number_words')}  kl {f('kl', '.4f')}  "
        f"entropy {f('entropy')}  step {f('icpo/step_seconds', '.1f')}s"
    )
    if "icpo/turns" in e or "icpo/correct_single" in e:  # conversation rollouts
        return (
            f"step {e['step']:>4}  return {f('reward')}  non-answer|under "
            f"{f('icpo/non_answer_under')}  over-clar|fully {f('icpo/over_clarification')} "
            f"(one turn {f('icpo/over_clarification_single')})  correct {f('icpo/correct')} "
            f"(one turn {f('icpo/correct_single')})  turns {f('icpo/turns', '.1f')}  {tail}"
        )
    return (
        f"step {e['step']:>4}  reward {f('reward')} (fully {f('icpo/reward_fully')}, "
        f"under {f('icpo/reward_under')})  non-answer|under {f('icpo/non_answer_under')}  "
        f"over-clar|fully {f('icpo/over_clarification')}  {tail}  "
        f"reward share {f('icpo/reward_time_share', '.2%')}"
    )


def conversation_items(recipe: Recipe) -> list[tuple[Instruction, str]]:
    """The (instruction, mode) pairs conversation rollouts train on: every instruction of
    ``tasks`` (or of the export in ``data``) in every mode of ``conversation_modes``."""
    if recipe.tasks:
        from icpo_eval.tasksets import load_tasks

        insts = load_tasks(recipe.tasks)
    else:
        from icpo_eval.export import load_export

        seen: dict[str, Instruction] = {}
        for row in load_export(recipe.data):
            inst = Instruction.from_dict(json.loads(row["instruction"]), where="export row")
            seen.setdefault(inst.task_id, inst)
        insts = list(seen.values())
    items = [(inst, mode) for inst in insts for mode in recipe.conversation_modes]
    if recipe.max_prompts is not None and len(items) > recipe.max_prompts:
        import random

        items = random.Random(recipe.seed).sample(items, recipe.max_prompts)
    if not items:
        raise IcpoError("no training instructions for conversation rollouts")
    return items


def train(recipe: Recipe) -> Path:
    """Run ICPO training; return the directory of the final checkpoint."""
    from icpo_eval.export import load_export

    conversations = recipe.rollout == "conversation"
    if not recipe.data and not (conversations and recipe.tasks):
        raise IcpoError(
            "no training data: set `data:` in the recipe or pass --data DIR"
            + (" (or `tasks:` for conversation rollouts)" if conversations else "")
        )
    rows = [] if conversations else load_export(recipe.data)
    trl = _trl()
    import datasets
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from transformers.utils import logging as hf_logging

    recipe.check(num_processes=PartialState().num_processes)
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    path = recipe.model_path
    if not Path(path).exists():
        raise IcpoError(f"model checkpoint not found: {path}")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    rollout_func = None
    if conversations:
        from icpo_eval.models.base import GenParams
        from icpo_eval.rollout import ConversationReward, ConversationRollout, item_key
        from icpo_eval.simulator import get_simulator

        items = conversation_items(recipe)
        n_under = sum(mode not in ("full", "concat") for _, mode in items)
        print(
            f"training conversations: {len(items)} (instruction, mode) pairs over "
            f"{len({i.task_id for i, _ in items})} instructions, modes "
            f"{', '.join(recipe.conversation_modes)}"
        )
        keyed = {item_key(mode, inst.task_id): (inst, mode) for inst, mode in items}
        dataset = datasets.Dataset.from_list(
            [
                {"prompt": key, "task_id": inst.task_id, "mode": mode, "family": inst.task}
                for key, (inst, mode) in keyed.items()
            ]
        )
        train_ids = sorted({inst.task_id for inst, _ in items})
        n_prompts = len(keyed)
    else:
        picked = select_rows(rows, recipe, lambda messages: prompt_tokens(tok, messages))
        n_under = sum(not r["fully_specified"] for r in picked)
        print(
            f"training prompts: {len(picked)} ({len(picked) - n_under} fully specified, "
            f"{n_under} underspecified) from {len(rows)} export rows"
        )
        columns = ("prompt", "fully_specified", "instruction", "family", "task_id")
        dataset = datasets.Dataset.from_list([{k: r[k] for k in columns} for r in picked])
        train_ids = sorted({str(r["task_id"]) for r in picked})
        n_prompts = len(picked)

    use_cpu = not torch.cuda.is_available()
    # The training config first: under accelerate with DeepSpeed ZeRO-3 it is what tells
    # from_pretrained to build the model sharded (zero3_init_flag), not whole on every process.
    args = grpo_config(recipe, use_cpu)
    # fp32 weights always: the optimizer updates these; `bf16: true` is autocast (args.bf16),
    # not bf16 weights, whose resolution (2^-8 relative) swallows updates at lr 1e-6.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    # transformers' Trainer sets config.use_cache to TrainingArguments.use_cache (False by
    # default) for training; the checkpoint is saved with the base model's value.
    use_cache = model.config.use_cache
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tok.eos_token_id is not None:
        eos_ids.append(tok.eos_token_id)
    if conversations:
        reward: Any = ConversationReward()
        rollout_func = ConversationRollout(
            items=keyed,
            simulator=get_simulator(recipe.simulator),
            judge=get_judge(recipe.judge),
            params=GenParams(
                temperature=recipe.temperature,
                top_p=recipe.top_p,
                max_new_tokens=recipe.max_completion_length,
            ),
            max_turns=recipe.max_turns,
            batch_size=recipe.rollout_batch_size,
            seed=recipe.seed,
        )
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental
    else:
        reward = IcpoReward(recipe.judge, eos_ids, tok.pad_token_id)
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_FILE
    log_path.unlink(missing_ok=True)
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[_callback(reward, log_path, recipe.max_minutes)],
        rollout_func=rollout_func,
    )
    trainer.remove_callback(PrinterCallback)  # our callback prints one line per step instead
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    trained = trainer.accelerator.unwrap_model(trainer.model)
    trained.config.use_cache = use_cache
    trained.generation_config.use_cache = use_cache
    trainer.save_model(str(out))  # collective under DeepSpeed ZeRO-3: every process calls it
    if not trainer.is_world_process_zero():
        return out
    tok.save_pretrained(str(out))
    summary = {
        "recipe": dataclasses.asdict(recipe),
        "trl": trl.__version__,
        "precision": {
            "weights": str(next(trained.parameters()).dtype).removeprefix("torch."),
            "autocast": trainer.accelerator.mixed_precision,
        },
        "rollout": recipe.rollout,
        "prompts": n_prompts,
        # single: underspecified prompts; conversation: (instruction, mode) pairs that reveal
        # the task over several turns.
        "underspecified_prompts": n_under,
        # What the checkpoint was trained on: `icpo-eval run` refuses to evaluate it there.
        "train_task_ids": train_ids,
        "steps": result.global_step,
        "train_seconds": round(seconds, 1),
        "training_loss": result.training_loss,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return out
