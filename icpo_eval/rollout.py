"""Conversation rollouts for the ICPO trainer: the policy plays whole sharded conversations.

With ``rollout: conversation`` in a recipe, every GRPO group is ``num_generations``
conversations on one training instruction, in one mode (``conversation_modes``: ``sharded``,
``full``, ...). The policy being trained plays the assistant, the project's own simulator plays
the user (it reveals the next shard, or answers the question the assistant asked), and the
conversation follows the harness's own loop and stop rules
(:class:`~icpo_eval.conversation.ConversationState`: a sharded conversation ends at the first
correct answer, once every shard is out and the assistant has answered, or at the turn cap).
Every assistant turn gets its ICPO reward from :func:`~icpo_eval.reward.judge_reply`, the
function the harness judges with.

Generation is the local backend's continuous batching with prefix caching
(:class:`~icpo_eval.models.local.LocalBackend`, over the policy in memory): every conversation
of the step is in flight at once, and a conversation's next turn reuses the cache of its
history. Nothing calls ``generate`` once per turn.

**What is trained.** A conversation becomes one token sequence, exactly as the policy saw and
wrote it: the prompt is the chat template's encoding of the system prompt and the first user
turn; then each reply's sampled ids (its end-of-turn token included when it stopped), each
followed by the environment's tokens up to the next reply (the template's end of turn when the
reply was cut off, the next user turn, the role header that cues the assistant). The backend is
handed these very ids as the next turn's prompt (:class:`RolloutBackend`), so the history the
policy conditions on in training is the history it generated from, token for token, and its
prefix cache covers everything but the new user turn. ``env_mask`` is 1 on the sampled ids and
0 on the environment's.

**From turn rewards to the advantage: a return per conversation.** GRPO gives one advantage
per sequence, so the conversation's return is the *mean of its assistant turns' ICPO
rewards*, normalised within the group of conversations on the same instruction. Both halves of
ICPO are paid, and holding back once the task is complete is not:

- a non-answer while the task is underspecified earns 1 for that turn, a guess 0;
- once every needed shard is out, a correct answer earns 1 and ends the conversation;
- a non-answer after that earns 0 *and* the conversation goes on (to the turn cap), each such
  turn diluting the mean: on a 4-shard task (3 underspecified turns, cap 6), asking three times
  and then answering right returns 1.0; asking and then answering wrong 0.75 (the answer ends
  the conversation); asking and never answering 0.5; guessing from the start and being right
  only at the end 0.25.

Turn-level advantages (a reward per turn, each turn's tokens weighted by its own advantage)
would need GRPO groups of turns with equal histories, which conversations that diverge after
their first reply do not have; a return per conversation keeps TRL's group normalisation exact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from icpo_eval.conversation import MULTI_TURN, ConversationState, start_conversation
from icpo_eval.errors import IcpoError
from icpo_eval.judges import TurnJudge, states_number_in_words
from icpo_eval.models.base import Generation, GenParams
from icpo_eval.records import NON_ANSWERS, Conversation, Instruction, derive_seed
from icpo_eval.simulator import Simulator

#: The modes a conversation rollout can play: one user turn (``full``, ``concat``) or the
#: harness's multi-turn modes.
ROLLOUT_MODES = ("full", "concat", *MULTI_TURN)


def item_key(mode: str, task_id: str) -> str:
    """The training dataset's ``prompt`` for one (instruction, mode): what the rollout reads."""
    return f"{mode}:{task_id}"


def conversation_return(rewards: list[float]) -> float:
    """The return of a conversation: the mean of its assistant turns' ICPO rewards (module
    docstring: why the mean, and what it pays)."""
    return sum(rewards) / len(rewards) if rewards else 0.0


@dataclass
class Trajectory:
    """One played conversation as TRL trains it, and what the trainer logs about it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    env_mask: list[int]
    record: Conversation

    @property
    def reward(self) -> float | None:
        if self.record.error is not None:
            return None  # a failed conversation (an LLM simulator gave up): no signal
        return conversation_return([t.reward or 0.0 for t in self.record.assistant_turns])

    def summary(self) -> str:
        """The per-conversation facts the reward function logs (JSON: TRL hands extra fields
        to reward functions as plain values)."""
        turns = self.record.assistant_turns
        return json.dumps(
            {
                "mode": self.record.mode,
                "fully": [bool(t.fully_specified) for t in turns],
                "held": [t.category in NON_ANSWERS and not t.truncated for t in turns],
                "words": [
                    t.category in NON_ANSWERS and states_number_in_words(t.content) for t in turns
                ],
                "correct": bool(self.record.ever_correct),
                "failed": self.record.error is not None,
                "capped": self.record.capped_unrevealed is not None,
            }
        )


class TokenPrompt(list):
    """A request's messages together with the exact token ids to feed for them (the
    conversation so far, as sampled): what :class:`RolloutBackend` encodes them as."""

    def __init__(self, messages: list[dict[str, str]], ids: list[int]) -> None:
        super().__init__(messages)
        self.ids = list(ids)


def _backend_class() -> type:
    from icpo_eval.models.local import LocalBackend

    class RolloutBackend(LocalBackend):
        """The local backend, fed a :class:`TokenPrompt`'s ids as they are."""

        def encode(self, messages: Any) -> list[int]:
            if isinstance(messages, TokenPrompt):
                return list(messages.ids)
            return super().encode(messages)

    return RolloutBackend


def environment_ids(
    tokenizer: Any,
    before: list[dict[str, str]],
    after: list[dict[str, str]],
    sampled: list[int],
    stop_ids: set[int],
) -> list[int]:
    """The tokens the environment adds between a reply and the next one: ``before`` is the
    conversation up to the reply, ``after`` the conversation with the reply and the next user
    turn. The reply's own end-of-turn token, when the policy sampled it, is not repeated."""
    prefix = tokenizer.apply_chat_template(before, tokenize=False, add_generation_prompt=True)
    text = tokenizer.apply_chat_template(after, tokenize=False, add_generation_prompt=True)
    reply = after[len(before)]["content"]
    if not text.startswith(prefix + reply):
        raise IcpoError(
            "conversation rollouts need a chat template that renders earlier turns as they "
            "were written; this model's template changes them"
        )
    env = list(tokenizer(text[len(prefix) + len(reply) :], add_special_tokens=False).input_ids)
    if sampled and sampled[-1] in stop_ids and env and env[0] == sampled[-1]:
        env = env[1:]
    return env


@dataclass
class ConversationRollout:
    """TRL's ``rollout_func``: plays the conversations a step's prompts name and returns their
    sequences (``prompt_ids``, ``completion_ids``, ``env_mask``), with ``icpo_return`` and
    ``icpo_conversation`` for the reward function (:class:`ConversationReward`).

    ``items``: :func:`item_key` -> (instruction, mode). The prompts TRL passes already hold each
    key ``num_generations`` times (its sampler repeats them), one conversation per prompt.
    """

    items: dict[str, tuple[Instruction, str]]
    simulator: Simulator
    judge: TurnJudge
    params: GenParams
    max_turns: int | None = None
    batch_size: int = 16
    seed: int = 0
    #: Builds the backend for a model in memory (tests pass a scripted one).
    backend_factory: Callable[[Any, Any], Any] | None = None
    calls: int = field(default=0, init=False)
    #: The last call's trajectories (the tests and the log read them).
    last: list[Trajectory] = field(default_factory=list, init=False)

    def states(self, prompts: list[str], step: int) -> list[ConversationState]:
        out = []
        for position, key in enumerate(prompts):
            if key not in self.items:
                raise IcpoError(f"conversation rollout: unknown training item {key!r}")
            inst, mode = self.items[key]
            state = start_conversation(
                inst,
                mode,
                self.simulator,
                self.judge,
                self.max_turns,
                conversation_id=f"train-{step}-{position}",
                run_id="train",
                model="policy",
                seed=derive_seed(self.seed, "rollout", step, position, key),
                run_index=position,
            )
            out.append(state)
        return out

    def play(self, backend: Any, states: list[ConversationState]) -> list[Trajectory]:
        """Run every conversation to its end on ``backend`` (continuous batching), each turn's
        prompt the exact ids of the conversation so far; return their trajectories."""
        tok, stops = backend.tokenizer, set(backend.stop_ids)
        seqs = [backend.encode(s.messages()) for s in states]
        starts = [len(ids) for ids in seqs]
        masks: list[list[int]] = [[] for _ in states]

        def on_result(i: int, gen: Generation) -> tuple[int, Any, int] | None:
            s = states[i]
            before = s.messages()
            s.observe(gen)
            own = list(gen.ids or [])
            seqs[i] += own
            masks[i] += [1] * len(own)
            if s.done:
                return None
            env = environment_ids(tok, before, s.messages(), own, stops)
            seqs[i] += env
            masks[i] += [0] * len(env)
            return (i, TokenPrompt(s.messages(), seqs[i]), s.next_seed())

        backend.stream(
            [(i, TokenPrompt(s.messages(), seqs[i]), s.next_seed()) for i, s in enumerate(states)],
            self.params,
            on_result,
        )
        return [
            Trajectory(seqs[i][: starts[i]], seqs[i][starts[i] :], masks[i], s.record)
            for i, s in enumerate(states)
        ]

    def rollout(self, prompts: list[str], model: Any, tokenizer: Any, step: int) -> dict:
        """Play ``prompts`` with ``model`` and return TRL's rollout output."""
        states = self.states(prompts, step)
        if self.backend_factory is not None:
            backend = self.backend_factory(model, tokenizer)
        else:
            backend = _backend_class().from_model("policy", model, tokenizer, self.batch_size)
        self.last = self.play(backend, states)
        self.calls += 1
        return {
            "prompt_ids": [t.prompt_ids for t in self.last],
            "completion_ids": [t.completion_ids for t in self.last],
            "logprobs": None,  # TRL computes the policy's log-probabilities itself
            "env_mask": [t.env_mask for t in self.last],
            "icpo_return": [t.reward for t in self.last],
            "icpo_conversation": [t.summary() for t in self.last],
        }

    def __call__(self, prompts: list[str], trainer: Any) -> dict:
        from trl.models import unwrap_model_for_generation

        tokenizer = trainer.processing_class
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
            return self.rollout(list(prompts), model, tokenizer, trainer.state.global_step)


def conversation_values(summaries: list[str]) -> list[tuple[str, list[float]]]:
    """What the trainer logs about a step's conversations, one value per turn or per
    conversation (TRL averages them over every process):

    - ``icpo/non_answer_under``: non-answers among underspecified turns (ICPO raises it);
    - ``icpo/over_clarification``: non-answers among fully specified turns of multi-turn
      conversations (must stay low), ``icpo/over_clarification_single`` the same in the one-turn
      modes (``full``, ``concat``);
    - ``icpo/correct`` / ``icpo/correct_single``: conversations with a correct answer;
    - ``icpo/turns``: assistant turns per multi-turn conversation; ``icpo/capped``: those that
      reached the turn cap with shards unrevealed;
    - ``icpo/non_answer_number_words``: non-answers that state a number in words
      (:func:`~icpo_eval.judges.states_number_in_words`: a quantity the judge may miss).
    """
    vals: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        vals.setdefault(name, []).append(float(value))

    for raw in summaries:
        c = json.loads(raw)
        if c["failed"]:
            continue
        single = c["mode"] not in MULTI_TURN
        for fully, held, words in zip(c["fully"], c["held"], c["words"]):
            if fully:
                add("icpo/over_clarification_single" if single else "icpo/over_clarification", held)
            else:
                add("icpo/non_answer_under", held)
            if held:
                add("icpo/non_answer_number_words", words)
        add("icpo/correct_single" if single else "icpo/correct", c["correct"])
        if not single:
            add("icpo/turns", len(c["fully"]))
            add("icpo/capped", c["capped"])
    return sorted(vals.items())


class ConversationReward:
    """TRL reward function of conversation rollouts: the return the rollout computed
    (``icpo_return``), and the step's conversation statistics (:func:`conversation_values`)."""

    __name__ = "icpo"

    def __init__(self) -> None:
        self.seconds = 0.0  # judging happens inside the rollout; nothing is timed here

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        icpo_return: list[float | None],
        icpo_conversation: list[str],
        log_metric: Any = None,
        **_: Any,
    ) -> list[float | None]:
        if log_metric is not None:
            for name, values in conversation_values(list(icpo_conversation)):
                for value in values:
                    log_metric(name, value)
        return list(icpo_return)
