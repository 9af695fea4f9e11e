"""The ICPO reward for verl, for training at scale on Ray: a reward function and a reward manager.

Export a run with ``icpo-eval export RUN --format verl -o DIR`` (the same prompt selection as
``icpo-eval train``; ``--recipe`` chooses it), then point verl at this file. Two pieces:

- :func:`compute_score`, verl's custom reward function: ``(data_source, solution_str,
  ground_truth, extra_info, truncated=False, **kwargs)``. ``ground_truth`` is the instruction
  JSON, ``extra_info`` carries ``fully_specified`` and the conversation so far (``messages``).
  It is the same :func:`judge_reply` that the harness and the TRL trainer use. Extra keyword
  arguments (``reward_router_address``, ``reward_model_tokenizer`` when verl has a reward
  router, or ``custom_reward_function.reward_kwargs``) are accepted; ``judge`` picks the turn
  judge (default ``rule``).
- the reward manager ``icpo`` (class ``IcpoRewardManager``). verl's own managers decode a
  rollout with special tokens skipped and never say whether it was cut off, so a truncated
  ramble on an underspecified prompt would earn the non-answer reward. This manager decodes the
  same way and also passes ``truncated=``: the response's last valid token (verl's
  ``attention_mask`` counts them) is neither an end-of-sequence id nor padding, the rule of the
  TRL trainer (:meth:`icpo_eval.train.IcpoReward.truncated`), and the response filled the
  rollout's ``response_length``. A single-turn rollout that did not end on EOS always filled
  it, so the two rules agree; the length condition keeps a multi-turn rollout that ends on the
  user's or a tool's tokens from counting as cut off. A truncated reply never earns the
  non-answer reward.

verl is imported only inside the functions that build the manager classes, so this module
imports without verl. When verl has been imported (inside a verl worker, which loads this file
as the custom reward function before it resolves the reward manager) importing this module
registers ``icpo`` with verl's reward-loop registry and with the older
``verl.workers.reward_manager`` one, whichever exist. See train/README.md for the config lines.

Note that an export row's ``extra_info["truncated"]`` is whether the *logged* reply of the run
was truncated, not the rollout's: only the ``truncated`` argument counts.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import sys
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families import get_family
from icpo_eval.judges import get_judge
from icpo_eval.records import Instruction
from icpo_eval.reward import judge_reply

_JUDGE = "rule"
#: The name the reward manager is registered under in verl's registries.
MANAGER_NAME = "icpo"
CANONICAL = "icpo_eval.verl_reward"


@functools.lru_cache(maxsize=4096)
def _instruction(ground_truth: str, where: str) -> Instruction:
    return Instruction.from_dict(json.loads(ground_truth), where=where)


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict[str, Any] | None = None,
    truncated: bool = False,
    judge: str = _JUDGE,
    **kwargs: Any,
) -> float:
    """The ICPO reward of one rollout of an exported row."""
    extra = extra_info or {}
    inst = _instruction(ground_truth, f"{data_source} ground_truth")
    history = json.loads(extra.get("messages") or "[]")
    fully = bool(extra.get("fully_specified", True))
    verdict = judge_reply(
        inst, get_family(inst.task), get_judge(judge), solution_str, history, fully, bool(truncated)
    )
    return verdict.reward


# --------------------------------------------------------------------------------------------
# Reading a verl rollout (pure Python: works on verl's DataProtoItem or anything shaped like it)
# --------------------------------------------------------------------------------------------


def valid_response_ids(batch: Any) -> list[int]:
    """The response tokens of one rollout that its attention mask marks valid (verl pads the
    ``responses`` tensor to the rollout's response length; the mask ends with the response's)."""
    responses = batch["responses"]
    width = int(responses.shape[-1])
    valid = int(batch["attention_mask"][-width:].sum()) if width else 0
    return [int(t) for t in responses[:valid].tolist()]


def is_truncated(ids: list[int], max_length: int, end_ids: set[int]) -> bool:
    """Cut off by the length limit: not ended by an end token (EOS or padding: the TRL
    trainer's rule) and all ``max_length`` tokens used."""
    return bool(ids) and max_length > 0 and len(ids) >= max_length and ids[-1] not in end_ids


def _config_get(config: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if config is None:
            return None
        try:
            config = config.get(key) if hasattr(config, "get") else getattr(config, key, None)
        except Exception:  # an OmegaConf node that cannot be read counts as absent
            return None
    return config


def end_token_ids(tokenizer: Any, model_path: str | None = None) -> set[int]:
    """The ids that end a reply: the tokenizer's EOS and padding (as the TRL trainer counts
    them) and, when the model's generation config can be read, the EOS ids the rollout engine
    stops on (vLLM follows ``generation_config.json``)."""
    ids: set[int] = set()

    def add(value: Any) -> None:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value if isinstance(v, int))

    add(getattr(tokenizer, "eos_token_id", None))
    add(getattr(tokenizer, "pad_token_id", None))
    if model_path:
        try:
            from transformers import GenerationConfig

            try:
                from verl.utils.fs import copy_to_local

                model_path = copy_to_local(model_path)
            except ImportError:
                pass
            add(GenerationConfig.from_pretrained(model_path).eos_token_id)
        except Exception:  # no readable generation config: the tokenizer's EOS only
            pass
    return ids


def _is_verl_default(fn: Any) -> bool:
    """verl hands a reward manager its built-in scorer when no custom function is set."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__module__", "").startswith("verl.utils.reward_score")


class RolloutScorer:
    """What the ``icpo`` reward manager does with one rollout, without verl: decode the valid
    response tokens as verl's naive manager does (special tokens skipped), tell whether the
    rollout was truncated, and call ``compute_score`` with ``truncated=``.

    ``item`` is verl's ``DataProtoItem`` or anything with ``batch`` (``responses``,
    ``attention_mask``) and ``non_tensor_batch`` (``data_source``, ``reward_model``,
    ``extra_info``).
    """

    def __init__(
        self,
        tokenizer: Any,
        compute_score_fn: Any = None,
        max_response_length: int | None = None,
        end_ids: set[int] | None = None,
        reward_fn_key: str = "data_source",
        score_kwargs: dict[str, Any] | None = None,
    ):
        self.tokenizer = tokenizer
        if compute_score_fn is None or _is_verl_default(compute_score_fn):
            compute_score_fn = compute_score
        self.compute_score = compute_score_fn
        self.max_response_length = max_response_length
        self.end_ids = set(end_ids) if end_ids is not None else end_token_ids(tokenizer)
        self.reward_fn_key = reward_fn_key
        self.score_kwargs = dict(score_kwargs or {})

    def limit(self, item: Any) -> int:
        """The rollout's length limit: the configured response length, or the width verl
        padded ``responses`` to (the same number unless configured otherwise)."""
        width = int(item.batch["responses"].shape[-1])
        if self.max_response_length:
            return min(int(self.max_response_length), width)
        return width

    def inputs(self, item: Any) -> dict[str, Any]:
        """The keyword arguments of the ``compute_score`` call for one rollout."""
        ids = valid_response_ids(item.batch)
        nt = item.non_tensor_batch
        extra = nt.get("extra_info")
        return {
            "data_source": nt.get(self.reward_fn_key, nt.get("data_source")),
            "solution_str": self.tokenizer.decode(ids, skip_special_tokens=True),
            "ground_truth": nt["reward_model"]["ground_truth"],
            "extra_info": dict(extra) if extra else {},
            "truncated": is_truncated(ids, self.limit(item), self.end_ids),
            **self.score_kwargs,
        }

    @staticmethod
    def result(score: Any, truncated: bool) -> dict[str, Any]:
        if isinstance(score, dict):
            info = dict(score)
            value = float(score["score"])
        else:
            value = float(score)
            info = {"acc": value}
        info["icpo_truncated"] = bool(truncated)
        return {"reward_score": value, "reward_extra_info": info}

    def score(self, item: Any) -> dict[str, Any]:
        """``{"reward_score", "reward_extra_info"}`` of one rollout (verl's reward-loop shape)."""
        kwargs = self.inputs(item)
        return self.result(self.compute_score(**kwargs), kwargs["truncated"])


# --------------------------------------------------------------------------------------------
# The verl classes, built on first use (verl imported here only)
# --------------------------------------------------------------------------------------------


def _canonical() -> Any:
    """This module as ``icpo_eval.verl_reward``: verl may load the file under another name (and
    more than once); the classes and their registration must exist once."""
    if __name__ == CANONICAL:
        return sys.modules[__name__]
    return importlib.import_module(CANONICAL)


@functools.cache
def _reward_loop_manager_cls() -> type:
    """For verl's reward loop (``verl.experimental.reward_loop``): ``async run_single(data)``."""
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

    class IcpoRewardManager(RewardManagerBase):
        """verl's naive reward manager plus ``truncated=`` (see :mod:`icpo_eval.verl_reward`)."""

        def __init__(
            self,
            config: Any,
            tokenizer: Any,
            compute_score: Any = None,
            reward_router_address: str | None = None,
            reward_model_tokenizer: Any = None,
            **kwargs: Any,
        ):
            super().__init__(config=config, tokenizer=tokenizer, compute_score=compute_score)
            self.tokenizer = tokenizer
            score_kwargs = (
                {
                    "reward_router_address": reward_router_address,
                    "reward_model_tokenizer": reward_model_tokenizer,
                }
                if reward_router_address is not None
                else {}
            )
            rollout = _config_get(config, "actor_rollout_ref.rollout.response_length")
            model_path = _config_get(config, "actor_rollout_ref.model.path")
            self.scorer = RolloutScorer(
                tokenizer,
                compute_score,
                max_response_length=rollout or _config_get(config, "data.max_response_length"),
                end_ids=end_token_ids(tokenizer, model_path),
                score_kwargs=score_kwargs,
            )

        async def run_single(self, data: Any) -> dict[str, Any]:
            import asyncio

            item = data[-1:][0]  # multi-sequence outputs: the last sequence is rewarded
            loop = asyncio.get_running_loop()
            kwargs = await loop.run_in_executor(None, self.scorer.inputs, item)
            fn = self.scorer.compute_score
            if inspect.iscoroutinefunction(fn):
                score = await fn(**kwargs)
            else:
                score = await loop.run_in_executor(None, lambda: fn(**kwargs))
                if inspect.isawaitable(score):
                    score = await score
            return self.scorer.result(score, kwargs["truncated"])

    # Importable as icpo_eval.verl_reward.IcpoRewardManager (pickles by reference for Ray).
    IcpoRewardManager.__module__ = CANONICAL
    IcpoRewardManager.__qualname__ = "IcpoRewardManager"
    return IcpoRewardManager


@functools.cache
def _legacy_manager_cls() -> type:
    """For verl's batch reward managers (``verl.workers.reward_manager``): ``__call__(data)``."""
    import torch
    from verl.workers.reward_manager.abstract import AbstractRewardManager

    class IcpoLegacyRewardManager(AbstractRewardManager):
        """verl's naive reward manager plus ``truncated=`` (see :mod:`icpo_eval.verl_reward`)."""

        def __init__(
            self,
            tokenizer: Any,
            num_examine: int = 0,
            compute_score: Any = None,
            reward_fn_key: str = "data_source",
            max_resp_len: int | None = None,
            **kwargs: Any,
        ):
            self.tokenizer = tokenizer
            self.num_examine = num_examine
            self.scorer = RolloutScorer(
                tokenizer, compute_score, max_resp_len, reward_fn_key=reward_fn_key
            )

        def __call__(self, data: Any, return_dict: bool = False) -> Any:
            if "rm_scores" in data.batch.keys():
                scores = data.batch["rm_scores"]
                return {"reward_tensor": scores, "reward_extra_info": {}} if return_dict else scores
            reward_tensor = torch.zeros_like(data.batch["responses"], dtype=torch.float32)
            extra: dict[str, list[Any]] = {}
            for i in range(len(data)):
                item = data[i]
                out = self.scorer.score(item)
                n = len(valid_response_ids(item.batch))
                if n > 0:
                    reward_tensor[i, n - 1] = out["reward_score"]
                for key, value in out["reward_extra_info"].items():
                    extra.setdefault(key, []).append(value)
            if return_dict:
                return {"reward_tensor": reward_tensor, "reward_extra_info": extra}
            return reward_tensor

    IcpoLegacyRewardManager.__module__ = CANONICAL
    IcpoLegacyRewardManager.__qualname__ = "IcpoLegacyRewardManager"
    return IcpoLegacyRewardManager


def forget_manager_classes() -> None:
    """Forget the manager classes built so far: the next :func:`reward_manager_cls` builds them
    again on the verl modules imported now (a process that swaps verl versions, tests)."""
    _reward_loop_manager_cls.cache_clear()
    _legacy_manager_cls.cache_clear()


def reward_manager_cls(api: str = "loop") -> type:
    """The verl reward manager class: ``loop`` (verl's reward loop, the current API) or
    ``legacy`` (``verl.workers.reward_manager``). Needs verl."""
    mod = _canonical()
    build = {"loop": mod._reward_loop_manager_cls, "legacy": mod._legacy_manager_cls}.get(api)
    if build is None:
        raise IcpoError(f"unknown verl reward manager API {api!r} (loop or legacy)")
    try:
        return build()
    except ImportError as e:
        raise IcpoError(f"the {api} verl reward manager needs verl ({e})") from None


def register_reward_managers(name: str = MANAGER_NAME) -> list[str]:
    """Register the manager under ``name`` in each verl registry that imports; returns which
    (``loop``, ``legacy``). Registering again is a no-op."""
    done = []
    for api, registry in (
        ("loop", "verl.experimental.reward_loop.reward_manager"),
        ("legacy", "verl.workers.reward_manager"),
    ):
        try:
            register = importlib.import_module(registry).register
            cls = reward_manager_cls(api)
        except (ImportError, AttributeError, IcpoError):
            continue
        register(name)(cls)
        done.append(api)
    return done


_LAZY = {"IcpoRewardManager": "loop", "IcpoLegacyRewardManager": "legacy"}


def __getattr__(name: str) -> Any:
    # ``reward.reward_manager.source=importlib`` loads the class by name from this file.
    if name in _LAZY:
        try:
            return reward_manager_cls(_LAZY[name])
        except IcpoError as e:
            raise AttributeError(str(e)) from None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if "verl" in sys.modules:  # loaded inside verl: make ``reward_manager.name=icpo`` resolvable
    _canonical().register_reward_managers()
