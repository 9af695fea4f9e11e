"""Shared fixtures: offline settings, a scripted backend and small instructions."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from icpo_eval.models.base import Generation, GenParams, Messages  # noqa: E402
from icpo_eval.records import Conversation, Instruction, Shard  # noqa: E402


class ScriptedBackend:
    """A backend whose reply is a function of the conversation so far (no model needed)."""

    name = "scripted"

    def __init__(self, reply: Callable[[Messages], str]):
        self.reply = reply
        self.calls: list[int] = []  # batch sizes handed over, one entry per generate() call

    def generate(
        self, requests: list[Messages], params: GenParams, seeds: list[int]
    ) -> list[Generation]:
        self.calls.append(len(requests))
        return [Generation(text=self.reply(m), tokens_in=1, tokens_out=1) for m in requests]


class ScriptedStreamingBackend(ScriptedBackend):
    """The same, with the streaming interface the local backend uses (continuous batching)."""

    def stream(self, requests, params, on_result):  # type: ignore[no-untyped-def]
        queue = deque(requests)
        while queue:
            key, msgs, seed = queue.popleft()
            self.calls.append(1)
            follow = on_result(key, Generation(text=self.reply(msgs), tokens_in=1, tokens_out=1))
            if follow is not None:
                queue.append(follow)


@pytest.fixture(params=["rounds", "stream"])
def scripted(request) -> type[ScriptedBackend]:  # type: ignore[no-untyped-def]
    """Both schedules of the runner: turn-by-turn rounds and streaming."""
    return ScriptedBackend if request.param == "rounds" else ScriptedStreamingBackend


def make_math(task_id: str = "t1", answer: str = "8") -> Instruction:
    """Tom has 3 apples, buys 5: how many? Shard 4 is a distractor (not required)."""
    return Instruction(
        task_id=task_id,
        task="math",
        shards=[
            Shard(1, "How many apples does Tom have at the end?"),
            Shard(2, "Tom starts with 3 apples in his basket."),
            Shard(3, "At the market Tom buys 5 more apples."),
            Shard(4, "Tom wears a red hat on market day."),
        ],
        required_shards=[1, 2, 3],
        fields={
            "question": "Tom starts with 3 apples in his basket. At the market Tom buys 5 more "
            "apples. How many apples does Tom have at the end?",
            "answer": answer,
        },
    )


@pytest.fixture
def math_inst() -> Instruction:
    return make_math()


def make_conversation(**fields: object) -> Conversation:
    """A conversation record with neutral defaults; pass the fields a test cares about."""
    base: dict[str, object] = dict(
        conversation_id="c",
        run_id="r",
        task_id="t",
        family="math",
        mode="sharded",
        model="m",
        simulator="rule",
        judge="rule",
        seed=0,
        run_index=0,
        version="0.1.0",
    )
    base.update(fields)
    return Conversation(**base)  # type: ignore[arg-type]


def scripted_reply(messages: Messages) -> str:
    """Ask while the user has given no number yet, then answer 8 (right for make_math's t1)."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    if len(users) == 1 and not any(ch.isdigit() for ch in users[0]):
        return "How many apples does Tom start with?"
    return "3 + 5 = 8.\nAnswer: 8"


def make_scripted_run(tmp_path: Path) -> Path:
    """A finished run (full and sharded) of two math tasks, t1 (answer 8) and t2 (answer 9),
    made with :func:`scripted_reply`; returns the run directory."""
    from icpo_eval.records import RunSpec
    from icpo_eval.runner import run
    from icpo_eval.tasksets import write_jsonl

    tasks = tmp_path / "tasks.jsonl"
    write_jsonl([make_math("t1", "8"), make_math("t2", "9")], tasks)
    out = tmp_path / "run"
    spec = RunSpec(model="scripted", tasks=str(tasks), modes=["full", "sharded"], out=str(out))
    run(spec, backend=ScriptedBackend(scripted_reply), progress=False)
    return out
