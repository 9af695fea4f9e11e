"""GPU check of the local engine (issue 16) and of the conversation-rollout trainer (issue 15).

Both parts run on a model of Qwen2.5-1.5B's shape (its config is written out below) with random
weights, built with ``AutoModelForCausalLM.from_config``: the GPU machine has no network and
no checkpoint, and what is measured here (throughput, step time, memory) depends on the shape,
not on the weights. Random weights rarely emit a stop token, so nearly every turn runs to its
token budget; the tables say so, and show the tokens a turn measured.

- ``engine``: sharded math conversations through the real runner with the project's local
  backend (continuous batching over ``--batch`` slots, greedy, ``--tokens`` new tokens a turn)
  against raw ``model.generate`` at the same batch on the first-turn prompts, every row to the
  full budget: the ceiling. Both are ``benchmarks/local_batching.py``'s own ``harness()`` and
  ``raw_generate()``; ``efficiency`` = continuous-batching tokens/s ÷ raw generate tokens/s.
  Also: the peak GPU memory of each (the model's weights included), the continuous batch's peak
  key/value pool, and the batch ``--batch-size auto`` picks on this device.
- ``rollout``: the step of the conversation trainer without TRL (not installed there). The
  policy plays ``--generations`` sharded conversations on each of ``--groups`` level-1 math
  training instructions through :class:`icpo_eval.rollout.ConversationRollout` (rule simulator
  and judge, temperature 1.0, ``--turn-tokens`` a turn as ``train/smollm2-cpu-online-warm.yaml``);
  then one policy-gradient update as GRPO/DAPO makes it on the first iteration (ratio 1, so the
  clipped objective is -A·logp): group-normalised advantages of the returns, the log-probs of
  the sampled tokens (where ``env_mask`` is 1) in one padded forward and backward pass, the
  token mean, gradient clipping at 1.0, an AdamW step. Timed per step: rollout, update, step;
  the figures are the mean of the steps after the first (which pays the warm-up). The
  committed CPU log (``results/icpo-online-warm/train_log_online.jsonl``: TRL on 2 CPU cores,
  G=4, SmolLM2-135M) is printed beside them.

  On random weights every reply runs into the token cap, and a cut-off reply earns 0, so every
  group's returns tie and GRPO's advantages are all 0: nothing to learn. Such a group gets
  placeholder advantages (+1 and -1 in turn, mean 0) so that the update still moves the
  weights and the check can see it did; the table says which groups got them. The cost of the
  update does not depend on the advantages' values.

  With bf16 weights (the default on a GPU) AdamW's first steps, about lr = 2e-5 each, are
  below half a bf16 step for most weights and are lost; the share of weights the first update
  changed is reported. The project's trainer keeps fp32 weights (with bf16 autocast):
  ``--part rollout --dtype fp32`` times fp32 weights (without the autocast).

Run it on the GPU machine in one call. First, on a machine with the embedded model (this
project's CPU box), save its tokenizer (SmolLM2's; its 49,152 ids fit in Qwen's vocabulary)::

    .venv/bin/python benchmarks/gpu_check.py --save-tokenizer tok/

then run there, carrying ``tok/``::

    PYTHONPATH=. python benchmarks/gpu_check.py --tokenizer tok/ --out $OUT

It prints one table per part and writes ``gpu_check.json`` to ``--out`` after each part (all
figures, the device, torch's version and the dtype); an error is one line on stderr (exit 1)
with the traceback in ``gpu_check_error.txt`` beside it. Time on an H200: a minute of start-up
(imports, the model built on the GPU), 2-4 minutes of engine (200 conversations: the whole
committed math set), about a minute of rollout steps; well inside 8 minutes. ``--n 100`` halves
the engine part. ``--tiny`` swaps in a tiny config for a CPU run of a few seconds (what the
tests run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # icpo_eval, without PYTHONPATH or an install
    sys.path.insert(0, str(ROOT))

from icpo_eval.errors import IcpoError  # noqa: E402

#: Qwen2.5-1.5B's config.json (the fields that set its shape and numerics).
QWEN25_15B: dict[str, Any] = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
#: ``--tiny``: the same architecture, small enough for a CPU run of seconds (the vocabulary is
#: the tokenizer's).
TINY: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
#: Defaults of the run-size options, full size and ``--tiny``.
DEFAULTS: dict[str, dict[str, int]] = {
    "full": {"n": 200, "batch": 64, "tokens": 48, "generations": 8, "turn_tokens": 96, "steps": 3},
    "tiny": {"n": 6, "batch": 4, "tokens": 6, "generations": 4, "turn_tokens": 6, "steps": 2},
}
CPU_LOG = ROOT / "results" / "icpo-online-warm" / "train_log_online.jsonl"
CPU_LOG_NOTE = (
    "TRL on 2 CPU cores, G=4, SmolLM2-135M, a sharded or a full-mode group a step "
    "(train/smollm2-cpu-online-warm.yaml)"
)
REPORT = "gpu_check.json"
ERROR_FILE = "gpu_check_error.txt"


@dataclass
class Setup:
    """The model under test and what both parts need to know about it."""

    model: Any
    tokenizer: Any
    device: str
    dtype: Any  # torch.dtype
    config_name: str


def log(message: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


def cuda(device: str) -> bool:
    return device.startswith("cuda")


def sync(device: str) -> None:
    import torch

    if cuda(device):
        torch.cuda.synchronize()


@contextmanager
def gpu_peak(device: str) -> Iterator[dict[str, float | None]]:
    """The peak GPU memory allocated (MB) while the block runs; None off a GPU."""
    import torch

    box: dict[str, float | None] = {"peak_mb": None}
    if cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield box
    if cuda(device):
        torch.cuda.synchronize()
        box["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20


def load_tokenizer(path: str | None) -> Any:
    """The tokenizer in ``path``; without one, the embedded model's (on a machine that has it)."""
    from transformers import AutoTokenizer

    if path is None:
        from icpo_eval.models.local import smollm2_checkpoint

        try:
            path = str(smollm2_checkpoint())
        except IcpoError as e:
            raise IcpoError(
                f"no --tokenizer given and no embedded model here ({e}); save one with "
                "--save-tokenizer DIR on a machine that has it and pass --tokenizer DIR"
            ) from None
    if not Path(path).is_dir():
        raise IcpoError(f"--tokenizer {path}: not a directory (make one with --save-tokenizer DIR)")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise IcpoError(f"--tokenizer {path}: cannot load a tokenizer from it ({e})") from None
    if not getattr(tok, "chat_template", None):
        raise IcpoError(f"--tokenizer {path}: it has no chat template")
    return tok


def save_tokenizer(target: str) -> int:
    """``--save-tokenizer DIR``: the embedded model's tokenizer, for a machine without it.

    transformers 5 names its class ``TokenizersBackend`` and keeps the chat template in a file
    of its own; the GPU machine's transformers may be a 4.x, so the saved config names the
    class by its older name (an alias in 5) and holds the template too.
    """
    from transformers import AutoTokenizer

    from icpo_eval.models.local import smollm2_checkpoint

    tok = AutoTokenizer.from_pretrained(str(smollm2_checkpoint()))
    tok.save_pretrained(target)
    config_path = Path(target) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.setdefault("chat_template", tok.chat_template)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    print(f"saved the embedded model's tokenizer ({len(tok)} tokens) to {target}")
    return 0


def build(tokenizer: Any, tiny: bool, dtype_name: str) -> Setup:
    """A random-weight model of Qwen2.5-1.5B's shape (``tiny``: a tiny one), on the GPU when
    there is one: bf16 there and fp32 on a CPU unless ``dtype_name`` says otherwise."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype_name == "auto":
        dtype_name = "bf16" if cuda(device) else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    fields = dict(TINY, vocab_size=len(tokenizer)) if tiny else dict(QWEN25_15B)
    if len(tokenizer) > fields["vocab_size"]:
        raise IcpoError(
            f"the tokenizer has {len(tokenizer)} tokens, more than the model's "
            f"{fields['vocab_size']}"
        )
    config = Qwen2Config(**fields)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: no 1.5B-parameter copy over PCIe
        model = AutoModelForCausalLM.from_config(config)
    model.to(device=device, dtype=dtype).eval()  # a no-op for the device where it was honoured
    # Qwen's stop id means nothing to this tokenizer: stop at the tokenizer's end of turn.
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id if pad is None else pad
    name = "tiny Qwen2" if tiny else "Qwen2.5-1.5B shape"
    params = sum(p.numel() for p in model.parameters())
    log(f"built {name} ({params / 1e6:.1f}M parameters, random weights) on {device}, {dtype_name}")
    return Setup(model, tokenizer, device, dtype, name)


class _DeviceTokenizer:
    """A tokenizer whose encodings land on ``device``: ``local_batching.raw_generate`` leaves
    them on the CPU, which a model on a GPU refuses."""

    def __init__(self, tokenizer: Any, device: str) -> None:
        self._tokenizer = tokenizer
        self._device = device

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs).to(self._device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


class _OnDevice:
    """What ``raw_generate`` reads of a backend (its model and tokenizer), inputs on device."""

    def __init__(self, backend: Any) -> None:
        self.model = backend.model
        self.tokenizer = _DeviceTokenizer(backend.tokenizer, backend.device)


def _row(
    setting: str,
    convs: int,
    batch: int,
    turns: int | None,
    tokens: int,
    wall: float,
    peak_mb: float | None,
    kv_mb: float | None,
) -> dict[str, Any]:
    return {
        "setting": setting,
        "conversations": convs,
        "batch": batch,
        "turns": turns,
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "tokens_per_turn": tokens / turns if turns else None,
        "peak_gpu_mb": peak_mb,
        "kv_pool_peak_mb": kv_mb,
    }


def local_batching() -> ModuleType:
    """``benchmarks/local_batching.py`` (beside this file), whose ``harness()`` and
    ``raw_generate()`` the engine part runs."""
    module = sys.modules.get("local_batching")
    if module is None:
        spec = importlib.util.spec_from_file_location("local_batching", HERE / "local_batching.py")
        if spec is None or spec.loader is None:
            raise IcpoError(f"cannot load {HERE / 'local_batching.py'}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["local_batching"] = module
    return module


def engine_part(setup: Setup, n: int, batch: int, tokens: int) -> dict[str, Any]:
    """Continuous batching through the runner vs raw ``model.generate`` (module docstring)."""
    from icpo_eval.models.local import LocalBackend
    from icpo_eval.tasksets import load_tasks

    harness, raw_generate = local_batching().harness, local_batching().raw_generate

    # What `--batch-size auto` picks, read before anything else takes GPU memory.
    auto = LocalBackend.from_model("gpu-check", setup.model, setup.tokenizer, None)
    backend = LocalBackend.from_model("gpu-check", setup.model, setup.tokenizer, batch)
    convs = min(n, len(load_tasks("math")))  # harness() plays each instruction once
    log("engine: warm-up")
    harness(backend, batch, 2, 8)
    raw_generate(_OnDevice(backend), batch, 4, n)
    log(f"engine: continuous batching, {convs} conversations")
    with gpu_peak(setup.device) as mem:
        wall, turns, made = harness(backend, batch, n, tokens)
    stats = backend.last_stats
    kv_mb = stats.peak_blocks * stats.block_bytes / 2**20 if stats is not None else None
    continuous = _row(
        "continuous batching (harness)", convs, batch, turns, made, wall, mem["peak_mb"], kv_mb
    )
    log("engine: raw model.generate")
    with gpu_peak(setup.device) as mem:
        raw_wall, raw_made = raw_generate(_OnDevice(backend), batch, tokens, n)
    raw = _row(
        "raw model.generate", batch, batch, None, int(raw_made), raw_wall, mem["peak_mb"], None
    )
    return {
        "conversations": convs,
        "batch": batch,
        "max_new_tokens": tokens,
        "rows": [continuous, raw],
        "efficiency": continuous["tokens_per_s"] / raw["tokens_per_s"],
        "auto_batch_size": auto.batch_size,
        "auto_batch_note": auto.batch_note,
    }


def training_items(groups: int) -> dict[str, tuple[Any, str]]:
    """``groups`` level-1 math training instructions (another generator seed than the
    evaluation set, as ``train/reproduce_icpo.py`` makes them), each played sharded."""
    from icpo_eval.families import get_family
    from icpo_eval.rollout import item_key

    insts = get_family("math").generate(groups, seed=1, mix={1: 1.0})
    return {item_key("sharded", inst.task_id): (inst, "sharded") for inst in insts}


def group_advantages(rewards: list[float], size: int) -> tuple[list[float], int]:
    """GRPO's advantages (``scale_rewards: group``): each return minus its group's mean, over
    the group's standard deviation (+1e-4); groups are consecutive runs of ``size``.

    A group whose returns all tie carries no signal (GRPO's advantages are 0 there); it gets
    placeholder advantages, +1 and -1 in turn less their mean, so that the update moves the
    weights (module docstring). Also returns how many groups tied.
    """
    out: list[float] = []
    tied = 0
    for start in range(0, len(rewards), size):
        group = rewards[start : start + size]
        spread = statistics.stdev(group) if len(group) > 1 else 0.0
        if spread > 0:
            mean = statistics.fmean(group)
            out += [(r - mean) / (spread + 1e-4) for r in group]
            continue
        tied += 1
        signs = [1.0 if j % 2 == 0 else -1.0 for j in range(len(group))]
        offset = statistics.fmean(signs)
        out += [s - offset for s in signs]
    return out, tied


def policy_update(
    model: Any,
    optimizer: Any,
    batch: dict[str, Any],
    advantages: list[float],
    pad_id: int,
    max_grad_norm: float = 1.0,
) -> dict[str, Any]:
    """One policy-gradient step on a rollout's sequences: token-mean of -A·logp over the
    sampled tokens (``env_mask`` 1), one padded forward and backward pass, clipping, AdamW.

    The log-probs are computed from the hidden states at the positions that predict a trained
    token only (the output layer over those rows, not over every position): what TRL's
    ``logits_to_keep`` does for a single-turn completion.
    """
    import torch

    device = next(model.parameters()).device
    seqs = [list(p) + list(c) for p, c in zip(batch["prompt_ids"], batch["completion_ids"])]
    masks = [[0] * len(p) + list(m) for p, m in zip(batch["prompt_ids"], batch["env_mask"])]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    trained = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (seq, mask) in enumerate(zip(seqs, masks)):
        ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        trained[i, : len(mask)] = torch.tensor(mask, dtype=torch.bool)
    ids, attention, trained = ids.to(device), attention.to(device), trained.to(device)
    targets = trained[:, 1:]  # the token at j + 1 is predicted at position j
    target_ids = ids[:, 1:][targets]
    weights = torch.tensor(advantages, dtype=torch.float32, device=device)[:, None]
    weights = weights.expand_as(targets)[targets]

    hidden = model.base_model(
        input_ids=ids, attention_mask=attention, use_cache=False
    ).last_hidden_state
    logits = model.get_output_embeddings()(hidden[:, :-1][targets]).float()
    logp = logits.log_softmax(-1).gather(-1, target_ids[:, None]).squeeze(-1)
    loss = -(weights * logp).sum() / targets.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sampled = [
        c for cs, ms in zip(batch["completion_ids"], batch["env_mask"]) for c, m in zip(cs, ms) if m
    ]
    return {
        "loss": float(loss.detach()),
        "grad_norm": float(grad_norm),
        "trained_tokens": int(targets.sum()),
        "sequence_tokens": int(attention.sum()),
        "padded_width": width,
        "trained_are_sampled": target_ids.tolist() == sampled,
    }


def mask_follows_replies(trajectory: Any, tokenizer: Any) -> bool:
    """Is ``env_mask`` 1 exactly on each reply's sampled ids? Its runs of 1s are, in order, the
    assistant turns: as many tokens as the turn's ``tokens_out``, decoding to its text."""
    ids, mask = trajectory.completion_ids, trajectory.env_mask
    if len(ids) != len(mask):
        return False
    runs: list[list[int]] = []
    for j, (tid, m) in enumerate(zip(ids, mask)):
        if m and (j == 0 or not mask[j - 1]):
            runs.append([])
        if m:
            runs[-1].append(tid)
    turns = trajectory.record.assistant_turns
    return len(runs) == len(turns) and all(
        len(run) == t.tokens_out
        and tokenizer.decode(run, skip_special_tokens=True).strip() == t.content
        for run, t in zip(runs, turns)
    )


def rollout_part(
    setup: Setup, generations: int, groups: int, turn_tokens: int, steps: int, lr: float = 2e-5
) -> dict[str, Any]:
    """Conversation rollouts and a policy-gradient update per step (module docstring)."""
    import torch

    from icpo_eval.judges import get_judge
    from icpo_eval.models.base import GenParams
    from icpo_eval.rollout import ConversationRollout
    from icpo_eval.simulator import get_simulator

    model, tok, device = setup.model, setup.tokenizer, setup.device
    items = training_items(groups)
    prompts = [key for key in items for _ in range(generations)]
    rollout = ConversationRollout(
        items=items,
        simulator=get_simulator("rule"),
        judge=get_judge("rule"),
        params=GenParams(temperature=1.0, top_p=1.0, max_new_tokens=turn_tokens),
        batch_size=len(prompts),  # every conversation of the step in flight at once
        seed=0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows: list[dict[str, Any]] = []
    changed_share: float | None = None
    masks_ok = True
    for step in range(steps):
        log(f"rollout: step {step + 1} of {steps}, {len(prompts)} conversations")
        with gpu_peak(device) as step_mem:
            t0 = time.perf_counter()
            with gpu_peak(device) as roll_mem:
                model.eval()
                batch = rollout.rollout(prompts, model, tok, step)
            t1 = time.perf_counter()
            masks_ok &= all(mask_follows_replies(t, tok) for t in rollout.last)
            rewards = [0.0 if r is None else float(r) for r in batch["icpo_return"]]
            advantages, tied = group_advantages(rewards, generations)
            before = [p.detach().clone() for p in model.parameters()] if step == 0 else None
            model.train()
            update = policy_update(model, optimizer, batch, advantages, pad_id)
            model.eval()
            sync(device)
            t2 = time.perf_counter()
        if before is not None:
            params = list(model.parameters())
            changed = sum(int((p.detach() != b).sum()) for p, b in zip(params, before))
            changed_share = changed / sum(p.numel() for p in params)
            del before
        masks_ok &= update.pop("trained_are_sampled")
        turns = [len(t.record.assistant_turns) for t in rollout.last]
        rows.append(
            {
                "step": step + 1,
                "conversations": len(prompts),
                "turns": sum(turns),
                "sampled_tokens": sum(sum(m) for m in batch["env_mask"]),
                **update,
                "mean_return": statistics.fmean(rewards),
                "tied_groups": tied,
                "rollout_s": t1 - t0,
                "update_s": t2 - t1,
                "step_s": t2 - t0,
                "rollout_peak_gpu_mb": roll_mem["peak_mb"],
                "peak_gpu_mb": step_mem["peak_mb"],
            }
        )
    timed = rows[1:] or rows
    keys = ("rollout_s", "update_s", "step_s", "peak_gpu_mb", "trained_tokens")
    mean = {
        k: (None if timed[0][k] is None else statistics.fmean(r[k] for r in timed)) for k in keys
    }
    return {
        "generations": generations,
        "groups": groups,
        "max_new_tokens": turn_tokens,
        "learning_rate": lr,
        "steps": rows,
        "mean_of": [r["step"] for r in timed],
        "mean": mean,
        "parameters_changed_share": changed_share,
        "env_mask_ok": masks_ok,
        "cpu_reference": cpu_reference(),
    }


def cpu_reference(path: Path = CPU_LOG) -> dict[str, Any] | None:
    """The committed CPU training log's mean step seconds (and turns, where it logged them)."""
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    seconds = [r["icpo/step_seconds"] for r in rows if "icpo/step_seconds" in r]
    # Only a step of sharded conversations logs `icpo/turns`; the others played full mode.
    sharded = [r for r in rows if "icpo/step_seconds" in r and "icpo/turns" in r]
    if not seconds:
        return None
    return {
        "log": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "steps": len(seconds),
        "mean_step_seconds": statistics.fmean(seconds),
        "sharded_steps": len(sharded),
        "mean_sharded_step_seconds": (
            statistics.fmean(r["icpo/step_seconds"] for r in sharded) if sharded else None
        ),
        "mean_turns": statistics.fmean(r["icpo/turns"] for r in sharded) if sharded else None,
        "note": CPU_LOG_NOTE,
    }


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_engine(res: dict[str, Any], setup: Setup) -> None:
    print(
        f"\nengine: {setup.config_name}, random weights, {_dtype(setup)} on {_device(setup)}; "
        f"sharded math, greedy, at most {res['max_new_tokens']} new tokens a turn, batch "
        f"{res['batch']}. Random weights rarely emit a stop token: turns run to the budget."
    )
    print(
        f"{'setting':<30} {'convs':>5} {'batch':>5} {'turns':>6} {'tokens':>7} {'seconds':>8} "
        f"{'tokens/s':>9} {'tok/turn':>8} {'peak MB':>8} {'KV MB':>6}"
    )
    for r in res["rows"]:
        per_turn = "-" if r["tokens_per_turn"] is None else f"{r['tokens_per_turn']:.1f}"
        print(
            f"{r['setting']:<30} {r['conversations']:>5} {r['batch']:>5} "
            f"{'-' if r['turns'] is None else r['turns']:>6} {r['tokens']:>7} "
            f"{r['seconds']:>8.2f} {r['tokens_per_s']:>9.1f} {per_turn:>8} "
            f"{_mb(r['peak_gpu_mb']):>8} {_mb(r['kv_pool_peak_mb']):>6}"
        )
    print(f"efficiency = {res['efficiency']:.2f} (continuous-batching ÷ raw generate tokens/s)")
    print(f"--batch-size auto here: {res['auto_batch_note']}")


def print_rollout(res: dict[str, Any], setup: Setup) -> None:
    print(
        f"\nrollout: {setup.config_name}, random weights, {_dtype(setup)} on {_device(setup)}; "
        f"G={res['generations']} sharded conversations on each of {res['groups']} level-1 math "
        f"instruction(s), rule simulator and judge, temperature 1.0, at most "
        f"{res['max_new_tokens']} tokens a turn; then token-mean -A·logp, AdamW lr "
        f"{res['learning_rate']:g}. Random weights rarely emit a stop token: turns run to the "
        "budget, a cut-off reply earns 0, so returns tie: tied groups get placeholder "
        "advantages (+1/-1)."
    )
    print(
        f"{'step':>4} {'convs':>5} {'turns':>5} {'sampled':>7} {'trained':>7} {'width':>5} "
        f"{'return':>6} {'tied':>4} {'loss':>8} {'rollout s':>9} {'update s':>8} {'step s':>7} "
        f"{'peak MB':>8}"
    )
    for r in res["steps"]:
        print(
            f"{r['step']:>4} {r['conversations']:>5} {r['turns']:>5} {r['sampled_tokens']:>7} "
            f"{r['trained_tokens']:>7} {r['padded_width']:>5} {r['mean_return']:>6.2f} "
            f"{r['tied_groups']:>4} {r['loss']:>8.4f} {r['rollout_s']:>9.2f} "
            f"{r['update_s']:>8.2f} {r['step_s']:>7.2f} {_mb(r['peak_gpu_mb']):>8}"
        )
    m = res["mean"]
    print(
        f"mean of steps {', '.join(map(str, res['mean_of']))}: rollout {m['rollout_s']:.2f} s, "
        f"update {m['update_s']:.2f} s, step {m['step_s']:.2f} s, peak {_mb(m['peak_gpu_mb'])} "
        f"MB, {m['trained_tokens']:.0f} tokens trained"
    )
    share = res["parameters_changed_share"]
    print(
        f"weights the first update changed: {100 * (share or 0):.1f}%; env_mask on the sampled "
        f"ids only: {'yes' if res['env_mask_ok'] else 'NO'}"
    )
    ref = res["cpu_reference"]
    if ref is None:
        print("CPU reference: no committed log found")
    else:
        sharded = ""
        if ref["mean_sharded_step_seconds"] is not None:
            sharded = (
                f" ({ref['sharded_steps']} of sharded conversations: "
                f"{ref['mean_sharded_step_seconds']:.1f} s, {ref['mean_turns']:.1f} turns each)"
            )
        print(
            f"CPU reference ({ref['log']}): {ref['steps']} steps, mean "
            f"{ref['mean_step_seconds']:.1f} s a step{sharded}: {ref['note']}"
        )


def _dtype(setup: Setup) -> str:
    return str(setup.dtype).removeprefix("torch.")


def _device(setup: Setup) -> str:
    import torch

    if cuda(setup.device):
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.get_num_threads()} threads)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--tokenizer", help="tokenizer directory (default: the embedded model's)")
    ap.add_argument("--save-tokenizer", metavar="DIR", help="save the embedded model's tokenizer")
    ap.add_argument("--out", default=".", help=f"where {REPORT} goes (default: .)")
    ap.add_argument("--part", choices=("engine", "rollout", "all"), default="all")
    ap.add_argument("--tiny", action="store_true", help="a tiny config (a CPU run of seconds)")
    ap.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="weights (auto: bf16 on a GPU, fp32 on a CPU)",
    )
    for name, what in (
        ("n", "engine: conversations"),
        ("batch", "engine: batch (slots / raw generate rows)"),
        ("tokens", "engine: max new tokens a turn"),
        ("generations", "rollout: G, conversations per instruction"),
        ("turn_tokens", "rollout: max new tokens a turn"),
        ("steps", "rollout: steps"),
    ):
        full, tiny = DEFAULTS["full"][name], DEFAULTS["tiny"][name]
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"{what} ({full} / {tiny})")
    ap.add_argument("--groups", type=int, default=1, help="rollout: instructions per step")
    ap.add_argument("--lr", type=float, default=2e-5, help="rollout: AdamW learning rate")
    args = ap.parse_args(argv)
    for name, value in DEFAULTS["tiny" if args.tiny else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in (*DEFAULTS["full"], "groups"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.generations < 2:
        ap.error("--generations must be at least 2 (GRPO compares a group)")
    return args


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model, run the parts ``args`` names, print their tables and write the report
    (after each part, so that a later failure keeps what was measured); return the report."""
    import torch
    import transformers

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    setup = build(load_tokenizer(args.tokenizer), args.tiny, args.dtype)
    seconds = {"build": time.perf_counter() - start}
    report: dict[str, Any] = {
        "device": _device(setup),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": _dtype(setup),
        "model": setup.config_name,
        "config": dict(TINY, vocab_size=len(setup.tokenizer)) if args.tiny else QWEN25_15B,
        "tiny": args.tiny,
        "seconds": seconds,  # wall time of each part, start-up (imports excluded) as "build"
    }

    def write() -> None:
        (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")

    if args.part in ("engine", "all"):
        t0 = time.perf_counter()
        report["engine"] = engine_part(setup, args.n, args.batch, args.tokens)
        seconds["engine"] = time.perf_counter() - t0
        write()
        print_engine(report["engine"], setup)
    if args.part in ("rollout", "all"):
        t0 = time.perf_counter()
        report["rollout"] = rollout_part(
            setup, args.generations, args.groups, args.turn_tokens, args.steps, args.lr
        )
        seconds["rollout"] = time.perf_counter() - t0
        write()
        print_rollout(report["rollout"], setup)
    write()
    spent = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    print(f"\nwrote {out / REPORT} ({spent})")
    return report


def main(argv: list[str] | None = None) -> int:
    """The command line: one clear line and exit status 1 on any error."""
    args = parse_args(argv)
    try:
        if args.save_tokenizer:
            return save_tokenizer(args.save_tokenizer)
        run_check(args)
        return 0
    except IcpoError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # one line; the traceback goes to a file beside the report
        first = (str(e).strip().splitlines() or [""])[0]
        where = Path(args.out) / ERROR_FILE
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            where.write_text(traceback.format_exc())
            note = f" (traceback in {where})"
        except OSError:
            note = ""
        print(f"gpu_check: error: {type(e).__name__}: {first}{note}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
