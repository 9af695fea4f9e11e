"""The ICPO reward as a verl custom reward function, for training at scale on Ray.

Export a run with ``icpo-eval export RUN --format verl -o DIR``, then point verl at this file::

    custom_reward_function.path=<site-packages>/icpo_eval/verl_reward.py
    custom_reward_function.name=compute_score

verl calls :func:`compute_score` once per rollout with the row's ``data_source``,
``reward_model.ground_truth`` (the instruction JSON) and ``extra_info`` (which carries
``fully_specified`` and the conversation so far). It is the same :func:`judge_reply` that the
harness and the TRL trainer use. verl does not say whether a rollout was cut off at its length
limit, so a truncated rollout is judged on its text; set verl's response length well above the
replies you expect.
"""

from __future__ import annotations

import json
from typing import Any

from icpo_eval.families import get_family
from icpo_eval.judges import get_judge, judge_reply
from icpo_eval.records import Instruction

_JUDGE = "rule"


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any] | None = None
) -> float:
    extra = extra_info or {}
    inst = Instruction.from_dict(json.loads(ground_truth), where=f"{data_source} ground_truth")
    history = json.loads(extra.get("messages") or "[]")
    fully = bool(extra.get("fully_specified", True))
    verdict = judge_reply(
        inst, get_family(inst.task), get_judge(_JUDGE), solution_str, history, fully
    )
    return verdict.reward
