"""A verl ``BaseInteraction``: the simulated user of a sharded conversation, for verl's
multi-turn rollouts (GRPO on a Ray cluster), and the trajectory reward that goes with it.

verl (0.7.x: ``verl.interactions``; later releases dropped the interaction API) runs a
multi-turn rollout in its ``tool_agent`` loop (``verl/experimental/agent_loop/
tool_agent_loop.py``). With ``actor_rollout_ref.rollout.multi_turn.interaction_config_path``
set, for each dataset row it takes ``extra_info["interaction_kwargs"]`` (``name`` picks the
interaction of the config file), calls ``start_interaction(request_id, **interaction_kwargs)``,
and after every assistant turn ``generate_response(request_id, messages,
**interaction_kwargs)``, where ``messages`` is the prompt plus every turn so far, the latest
assistant reply last (decoded with special tokens skipped). The answer is ``(should_terminate,
user_message, turn_score, metadata)``: the user message is appended (masked out of the loss),
``turn_score`` goes into the rollout's ``extra_fields["turn_scores"]`` list, the metadata is
dropped. verl ends a rollout itself, without asking the interaction, when the response reaches
``rollout.response_length`` tokens or ``multi_turn.max_assistant_turns`` /
``max_user_turns``; it never calls ``finalize_interaction``.

:class:`IcpoInteraction` (built on first use, subclassing verl's real ``BaseInteraction``; see
:func:`interaction_cls`) keeps per rollout the instruction, its family, the simulator, the
judge, the shards revealed and the turns so far, in a
:class:`~icpo_eval.conversation.ConversationState`: the harness's own loop, so the stop rules
and the turn cap are the harness's (``sharded`` mode by default: it stops at the first correct
answer, or once every shard is revealed and the assistant made an answer attempt, or at the
turn cap :func:`~icpo_eval.records.turn_cap`, ``max_turns`` or the shard count plus 2). Each
reply is judged by :func:`~icpo_eval.reward.judge_reply` (the one door for the ICPO turn
reward): on a turn where every required shard is out, the correctness score; before that, 1
for a non-answer that engages with the task and 0 for an answer attempt.

Config (the interaction YAML's ``config``): ``judge`` (``rule``), ``simulator`` (``rule`` or
``llm:MODEL``), ``max_turns`` (null: shards + 2), ``mode`` (``sharded``, ``snowball`` or
``recap``), ``seed`` (0: the simulator's seeds derive from it and the task id),
``max_reply_chars`` (65,536) and ``max_instances`` (100,000 live conversations).
``interaction_kwargs`` (what ``icpo-eval export --format verl`` writes): ``name`` (``icpo``),
``instruction`` (the instruction JSON) and optionally ``revealed`` (the shard ids the row's
prompt already gave; default shard 1's).

Where a row's prompt is not system prompt + shard 1 (a later turn of a run, an augment row), the
conversation continues from it: at the first reply the prompt's user and assistant messages
become the conversation so far (its assistant turns count towards the cap) and ``revealed``
the shards out.

How turn rewards are combined. verl itself does nothing with ``turn_scores`` but hand them to
the reward function: its reward loop (the default when there is no reward model) calls the
reward manager with the rollout's ``extra_fields`` merged into ``extra_info``, and GRPO uses the
one number that returns per trajectory. :func:`compute_score` (set it as
``reward.custom_reward_function``) returns the **mean ICPO turn reward over the rollout's
assistant turns**; a last turn verl ended without asking the interaction (cut at
``response_length``, or its own turn limits) counts 0, as a truncated reply never earns the
non-answer reward. So a non-answer while the task is underspecified is paid (1 for that turn),
a correct answer once it is fully specified is paid (its score) and ends the conversation, and
holding back after that earns nothing (0 for each such turn, which lowers the mean: waiting
costs). A premature answer earns 0 for its turn, and a correct one ends the conversation there.
``combine: sum`` in ``custom_reward_function.reward_kwargs`` sums instead (no cost for
waiting until the cap). A rollout with no interaction turn at all (the single-turn agent loop,
one assistant turn) gets the single-turn reward of :func:`icpo_eval.verl_reward.compute_score`.

Hostile replies. The assistant message is untrusted: it fails at most its own turn, never the
rollout worker. Content that is not a string (a list, None, a number) or no assistant message
at all is judged as an empty reply (category ``missing``, reward 0; the metadata says why).
A reply over ``max_reply_chars`` is cut there and judged as truncated (as the harness judges a
reply cut by the token limit: never a paid non-answer). An exception out of the judge or
simulator that is not the user's doing ends that conversation with reward 0 and the error in
the metadata (an LLM judge or simulator that gave up: :class:`~icpo_eval.models.base.
CallFailed`, likewise). A missing or unknown instance id, and malformed ``interaction_kwargs``,
are the caller's error: one :class:`~icpo_eval.errors.IcpoError` line.

verl is imported only when the class is first asked for: without verl this module imports and
``IcpoInteraction`` raises one IcpoError naming the install command.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from icpo_eval.conversation import MULTI_TURN, ConversationState, start_conversation
from icpo_eval.errors import IcpoError
from icpo_eval.judges import TurnJudge, get_judge
from icpo_eval.models.base import Generation
from icpo_eval.records import Instruction, Turn, derive_seed
from icpo_eval.reward import error_text
from icpo_eval.simulator import Simulator, get_simulator

logger = logging.getLogger(__name__)

#: The interaction's name: ``interaction_kwargs["name"]`` and the config's ``name``.
INTERACTION_NAME = "icpo"
CANONICAL = "icpo_eval.verl_interaction"
#: The verl release whose ``BaseInteraction`` this is tested against (the last with one).
VERL_VERSION = "0.7.1"
INSTALL_HINT = "pip install 'icpo-eval[verl]' (or scripts/bootstrap.sh)"
DEFAULT_MAX_REPLY_CHARS = 65_536
DEFAULT_MAX_INSTANCES = 100_000
#: The user message that closes a conversation (verl appends it, masked out of the loss).
CLOSING_MESSAGE = "Thank you."


@functools.lru_cache(maxsize=4096)
def _instruction(text: str) -> Instruction:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise IcpoError(f"interaction_kwargs['instruction']: not valid JSON ({e})") from None
    return Instruction.from_dict(data, where="interaction_kwargs['instruction']")


def _config_int(config: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = config.get(key, default)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        msg = f"icpo interaction config: {key} must be an integer, got {value!r}"
        raise IcpoError(msg) from None


def reply_text(messages: Any, max_chars: int) -> tuple[str, bool, str | None]:
    """The latest assistant reply of ``messages`` as (text, cut, why it is empty or cut).

    Hostile shapes give an empty reply with the reason: no list, no assistant message after the
    last user message, content that is not a string. A reply over ``max_chars`` is cut."""
    if not isinstance(messages, (list, tuple)) or not messages:
        return "", False, "no messages"
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "assistant":
        return "", False, "no assistant message last"
    content = last.get("content")
    if not isinstance(content, str):
        return "", False, f"assistant content is {type(content).__name__}, not a string"
    if len(content) > max_chars:
        return content[:max_chars], True, f"reply of {len(content)} chars cut to {max_chars}"
    return content, False, None


def _prompt_turns(messages: Any) -> list[tuple[str, str]]:
    """(role, content) of the user and assistant messages before the latest reply."""
    out = []
    for m in list(messages)[:-1] if isinstance(messages, (list, tuple)) else []:
        if isinstance(m, Mapping) and m.get("role") in ("user", "assistant"):
            content = m.get("content")
            out.append((str(m["role"]), content if isinstance(content, str) else ""))
    return out


@dataclass
class Session:
    """One rollout's conversation."""

    state: ConversationState
    synced: bool = False
    revealed: set[int] = field(default_factory=set)
    rewards: list[float] = field(default_factory=list)


class IcpoSessions:
    """The interaction without verl: per-instance conversations, the four async methods of
    verl's ``BaseInteraction``. :class:`IcpoInteraction` is this on verl's base class."""

    def __init__(self, config: Mapping[str, Any] | None = None):
        config = dict(config or {})
        self.config = config
        self.name = str(config.get("name") or INTERACTION_NAME)
        self.judge_name = str(config.get("judge") or "rule")
        self.simulator_name = str(config.get("simulator") or "rule")
        self.mode = str(config.get("mode") or "sharded")
        if self.mode not in MULTI_TURN:
            raise IcpoError(f"icpo interaction config: mode must be one of {', '.join(MULTI_TURN)}")
        self.max_turns = _config_int(config, "max_turns", None)
        self.seed = _config_int(config, "seed", 0) or 0
        chars = _config_int(config, "max_reply_chars", DEFAULT_MAX_REPLY_CHARS)
        self.max_reply_chars = max(1, chars if chars is not None else DEFAULT_MAX_REPLY_CHARS)
        count = _config_int(config, "max_instances", DEFAULT_MAX_INSTANCES)
        self.max_instances = max(1, count if count is not None else DEFAULT_MAX_INSTANCES)
        self.judge: TurnJudge = get_judge(self.judge_name)
        self.simulator: Simulator = get_simulator(self.simulator_name)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        #: Turn rewards of conversations that ended (verl never calls finalize_interaction).
        self._finished: OrderedDict[str, list[float]] = OrderedDict()

    # -- verl's API ---------------------------------------------------------------------------
    async def start_interaction(
        self,
        instance_id: str | None = None,
        instruction: str | Mapping[str, Any] | None = None,
        revealed: Any = None,
        **kwargs: Any,
    ) -> str:
        """Start a conversation on ``instruction`` (JSON text or a mapping); returns its id."""
        if instance_id is None:
            instance_id = uuid4().hex
        if not isinstance(instance_id, str) or not instance_id:
            raise IcpoError(f"icpo interaction: instance id must be a string, got {instance_id!r}")
        if instruction is None:
            raise IcpoError(
                "icpo interaction: interaction_kwargs has no 'instruction' (export the data with "
                "icpo-eval export --format verl)"
            )
        if isinstance(instruction, Mapping):
            where = "interaction_kwargs['instruction']"
            inst = Instruction.from_dict(dict(instruction), where=where)
        elif isinstance(instruction, str):
            inst = _instruction(instruction)
        else:
            raise IcpoError(
                "icpo interaction: interaction_kwargs['instruction'] must be JSON text, got "
                f"{type(instruction).__name__}"
            )
        state = start_conversation(
            inst,
            self.mode,
            self.simulator,
            self.judge,
            self.max_turns,
            conversation_id=instance_id,
            run_id="verl",
            model="verl",
            seed=derive_seed(self.seed, inst.task_id),
        )
        session = Session(state, revealed=self._revealed(inst, revealed))
        self._sessions[instance_id] = session
        self._sessions.move_to_end(instance_id)
        while len(self._sessions) > self.max_instances:  # verl never finalizes: bound memory
            old, _ = self._sessions.popitem(last=False)
            logger.warning("icpo interaction: dropped conversation %s (max_instances)", old)
        return instance_id

    async def generate_response(
        self, instance_id: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> tuple[bool, str, float, dict[str, Any]]:
        """Judge the latest assistant reply; (should_terminate, next user message, the turn's
        ICPO reward, metadata)."""
        session = self._session(instance_id)
        loop = asyncio.get_running_loop()
        # Judging (an LLM judge, a code sandbox) and the simulator may block: not on verl's loop.
        result = await loop.run_in_executor(None, self._respond, instance_id, session, messages)
        if result[0]:  # ended: verl never calls finalize_interaction, so forget it here
            self._sessions.pop(instance_id, None)
            self._finished[instance_id] = session.rewards
            while len(self._finished) > self.max_instances:
                self._finished.popitem(last=False)
        return result

    async def calculate_score(self, instance_id: str | None = None, **kwargs: Any) -> float:
        """The conversation's reward so far: the mean of its turn rewards (0 before any)."""
        if instance_id in self._finished:
            rewards = self._finished[instance_id]
        else:
            rewards = self._session(instance_id).rewards
        return sum(rewards) / len(rewards) if rewards else 0.0

    async def finalize_interaction(self, instance_id: str | None = None, **kwargs: Any) -> None:
        """Forget a conversation (verl 0.7 never calls this; ended ones are forgotten anyway)."""
        self._sessions.pop(instance_id, None)  # type: ignore[arg-type]
        self._finished.pop(instance_id, None)  # type: ignore[arg-type]

    # -- internals ----------------------------------------------------------------------------
    def _session(self, instance_id: Any) -> Session:
        if instance_id is None:
            raise IcpoError("icpo interaction: no instance id (call start_interaction first)")
        try:
            return self._sessions[instance_id]
        except (KeyError, TypeError):
            ended = " (that conversation has ended)" if instance_id in self._finished else ""
            raise IcpoError(
                f"icpo interaction: unknown instance id {str(instance_id)[:80]!r}{ended}"
            ) from None

    @staticmethod
    def _revealed(inst: Instruction, revealed: Any) -> set[int]:
        if revealed is None:
            return {inst.shards[0].shard_id}
        try:
            ids = {int(x) for x in revealed}
        except (TypeError, ValueError):
            raise IcpoError(
                f"icpo interaction: interaction_kwargs['revealed'] must be shard ids, got "
                f"{str(revealed)[:80]}"
            ) from None
        known = {s.shard_id for s in inst.shards}
        if not ids <= known:
            raise IcpoError(
                f"icpo interaction: revealed shard ids {sorted(ids - known)} are not shards of "
                f"{inst.task_id}"
            )
        return ids

    def _sync(self, session: Session, messages: Any) -> None:
        """At the first reply: a prompt that is not the state's own opening (system prompt +
        shard 1) becomes the conversation so far."""
        session.synced = True
        state = session.state
        prompt = _prompt_turns(messages)
        own = [(t.role, t.content) for t in state.record.turns]
        if not prompt or prompt == own:
            return
        state.record.turns = [
            Turn(index=i, role=role, content=content) for i, (role, content) in enumerate(prompt)
        ]
        state.revealed = set(session.revealed)

    def _respond(
        self, instance_id: str, session: Session, messages: Any
    ) -> tuple[bool, str, float, dict[str, Any]]:
        state = session.state
        text, cut, why = reply_text(messages, self.max_reply_chars)
        before = len(state.record.turns)
        fully = state.inst.required_ids <= state.revealed
        try:
            if not session.synced:
                self._sync(session, messages)
                before = len(state.record.turns)
                fully = state.inst.required_ids <= state.revealed
            state.observe(Generation(text=text, truncated=cut))
        except IcpoError as e:  # a setting of the user's (an unknown family file, ...)
            state.fail(str(e))
        except Exception as e:  # a bug met by this reply: this conversation ends, not verl
            logger.warning("icpo interaction %s: %s", instance_id, error_text(e))
            state.fail(error_text(e))
        new = state.record.turns[before:]
        turn = new[0] if new and new[0].role == "assistant" else None
        reward = float(turn.reward or 0.0) if turn is not None else 0.0
        session.rewards.append(reward)
        meta: dict[str, Any] = {
            "turn": len(state.record.assistant_turns),
            "fully_specified": fully,
            "category": turn.category if turn else None,
            "score": turn.score if turn else None,
            "reward": reward,
            "withheld": turn.note if turn else None,
            "revealed": sorted(state.revealed),
            "input_problem": why,
        }
        if state.record.error is not None:
            meta["error"] = state.record.error
        if state.done:
            meta["capped_unrevealed"] = state.record.capped_unrevealed
            return True, CLOSING_MESSAGE, reward, meta
        user = state.record.turns[-1]
        return False, user.content, reward, meta


@functools.cache
def interaction_cls() -> type:
    """:class:`IcpoSessions` on verl's real ``verl.interactions.base.BaseInteraction``."""
    try:
        from verl.interactions.base import BaseInteraction
    except ImportError as e:
        raise IcpoError(
            f"the icpo verl interaction needs verl {VERL_VERSION} ({e}); install it with "
            f"{INSTALL_HINT}"
        ) from None

    class IcpoInteraction(IcpoSessions, BaseInteraction):
        """The simulated user of a sharded conversation (see :mod:`icpo_eval.verl_interaction`)."""

        def __init__(self, config: dict[str, Any]):
            BaseInteraction.__init__(self, dict(config or {}))
            IcpoSessions.__init__(self, config)

    IcpoInteraction.__module__ = CANONICAL
    IcpoInteraction.__qualname__ = "IcpoInteraction"
    return IcpoInteraction


def __getattr__(name: str) -> Any:
    # verl's interaction registry does getattr(module, "IcpoInteraction").
    if name == "IcpoInteraction":
        return interaction_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# The trajectory reward
# --------------------------------------------------------------------------------------------

COMBINE = ("mean", "sum")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if hasattr(value, "tolist"):
        value = value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else [value]


def combine_turn_scores(
    turn_scores: Any, num_turns: Any = None, combine: str = "mean"
) -> tuple[float, int, int]:
    """(reward, judged turns, unjudged turns) of a multi-turn rollout.

    ``num_turns`` is verl's ``__num_turns__`` (user turns + assistant turns + 1, the prompt's
    user turn counted as the 1); each interaction call adds one user turn and one score, so the
    assistant turns are ``num_turns - 1 - len(turn_scores)`` and a last reply that verl never
    showed the interaction is one more than the scores. It counts 0."""
    if combine not in COMBINE:
        raise IcpoError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
    scores = [float(s) for s in _as_list(turn_scores) if s is not None]
    unjudged = 0
    try:
        if num_turns is not None:
            assistant = int(num_turns) - 1 - len(scores)
            unjudged = max(0, assistant - len(scores))
    except (TypeError, ValueError):
        unjudged = 0
    n = len(scores) + unjudged
    total = sum(scores)
    if combine == "sum":
        return total, len(scores), unjudged
    return (total / n if n else 0.0), len(scores), unjudged


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict[str, Any] | None = None,
    combine: str = "mean",
    **kwargs: Any,
) -> dict[str, Any]:
    """verl's custom reward function for multi-turn rollouts with :class:`IcpoInteraction`:
    the combined turn rewards (see the module doc) and how many turns went into it."""
    extra = dict(extra_info or {})
    scores = _as_list(extra.get("turn_scores"))
    num_turns = extra.get("num_turns")
    if hasattr(num_turns, "item"):
        num_turns = num_turns.item()
    if not scores and (num_turns is None or int(num_turns) <= 2):
        from icpo_eval.verl_reward import compute_score as single_turn

        value = float(single_turn(data_source, solution_str, ground_truth, extra, **kwargs))
        return {"score": value, "icpo_judged_turns": 1, "icpo_unjudged_turns": 0}
    value, judged, unjudged = combine_turn_scores(scores, num_turns, combine)
    return {"score": value, "icpo_judged_turns": judged, "icpo_unjudged_turns": unjudged}
