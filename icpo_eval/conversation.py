"""The conversation loop: the one place that knows the order of things.

A :class:`ConversationState` is a small state machine. The runner asks it for the messages to
send, hands it the model's reply, and it judges the reply, decides whether the conversation is
over, and if not asks the simulator for the next user turn. Batching lives in the runner; this
module never sees more than one conversation.

Modes (DESIGN.md, Modes):

- ``full``: the original instruction in one user turn; one assistant turn.
- ``concat``: every shard as a bullet list in one user turn; one assistant turn.
- ``sharded``: shard 1 first, then the simulator's turns. It stops at the first correct answer,
  or once every shard is revealed and the assistant has answered after that, and always after
  the turn cap (:func:`~icpo_eval.records.turn_cap`: ``--max-turns``, by default the shard
  count plus a margin, so that a model that waits to hear everything can). A conversation that
  reaches the cap with shards unrevealed says how many (``capped_unrevealed``).
- ``recap``: a sharded conversation run to its end (same stop rules and cap), then one more user
  turn restating every shard as a bullet list (as ``concat``) and one more assistant turn, which
  decides the final score. The recap turn comes on top of the ``max_turns`` cap.
- ``snowball``: as ``sharded``, but every user turn after the first restates all shards
  revealed before it (bullet list, in shard order), then adds what the simulator says.

An API call that fails for good (:class:`~icpo_eval.models.base.CallFailed`, or a generation
carrying an ``error``) ends the conversation as failed: recorded with its error, left out of the
scores, never scored 0.
"""

from __future__ import annotations

from datetime import datetime, timezone

from icpo_eval import __version__
from icpo_eval.families import Family, get_family
from icpo_eval.judges import TurnJudge
from icpo_eval.models.base import CallFailed, Generation, Messages
from icpo_eval.records import Conversation, Instruction, Turn, derive_seed, turn_cap
from icpo_eval.reward import judge_reply
from icpo_eval.simulator import Simulator, UserTurn

#: Modes that reveal shards turn by turn (the simulator speaks, the stop rules apply).
MULTI_TURN = ("sharded", "recap", "snowball")
RECAP_INTRO = "To recap, here is everything about the task:"
SNOWBALL_INTRO = "So far I told you:"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def concat_prompt(inst: Instruction) -> str:
    """All shards as one bullet list (LiC's `concat` mode)."""
    return "\n".join(f"- {s.shard}" for s in inst.shards)


def recap_prompt(inst: Instruction) -> str:
    """The recap turn: every shard restated (LiC's ``recap`` mode)."""
    return f"{RECAP_INTRO}\n{concat_prompt(inst)}"


def snowball_prompt(inst: Instruction, earlier: set[int], text: str) -> str:
    """A snowball turn: the shards revealed before it, restated, then the new text."""
    before = [s for s in inst.shards if s.shard_id in earlier]
    if not before:
        return text
    bullets = "\n".join(f"- {s.shard}" for s in before)
    return f"{SNOWBALL_INTRO}\n{bullets}\n\n{text}"


class ConversationState:
    def __init__(
        self,
        inst: Instruction,
        family: Family,
        record: Conversation,
        system_prompt: str,
        simulator: Simulator,
        judge: TurnJudge,
        max_turns: int | None,
    ):
        self.inst = inst
        self.family = family
        self.record = record
        self.system_prompt = system_prompt
        self.simulator = simulator
        self.judge = judge
        self.max_turns = max(1, turn_cap(max_turns, inst))
        self.revealed: set[int] = set()
        self.done = False
        self.recapped = False
        record.started_at = record.started_at or _now()
        record.version = __version__
        mode = record.mode
        all_ids = [s.shard_id for s in inst.shards]
        if mode == "full":
            self._add_user(UserTurn(family.full_prompt(inst), all_ids, "full"))
        elif mode == "concat":
            self._add_user(UserTurn(concat_prompt(inst), all_ids, "concat"))
        elif mode in MULTI_TURN:
            self._add_user(simulator.first_turn(inst))
        else:
            raise ValueError(f"unknown mode {mode!r}")

    # -- what the runner uses -------------------------------------------------------------
    def messages(self) -> Messages:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        msgs += [{"role": t.role, "content": t.content} for t in self.record.turns]
        return msgs

    def prompt_chars(self) -> int:
        return len(self.system_prompt) + sum(len(t.content) for t in self.record.turns)

    def next_seed(self) -> int:
        """Sampling seed of the next assistant turn: stable for (run seed, conversation, turn)."""
        return derive_seed(self.record.seed, len(self.record.turns))

    def observe(self, gen: Generation) -> None:
        """Record the assistant's reply, judge it, and either finish or add the next user turn."""
        if gen.error is not None:
            self.fail(gen.error)
            return
        try:
            self._observe(gen)
        except CallFailed as e:  # the LLM judge or simulator gave up: this conversation fails
            self.fail(str(e))

    def _observe(self, gen: Generation) -> None:
        history = self.messages()
        fully = self.inst.required_ids <= self.revealed
        v = judge_reply(self.inst, self.family, self.judge, gen.text, history, fully, gen.truncated)
        turn = Turn(
            index=len(self.record.turns),
            role="assistant",
            content=gen.text,
            fully_specified=fully,
            category=v.category,
            answer=v.answer,
            score=v.score,
            detail=v.detail,
            reward=v.reward,
            truncated=gen.truncated,
            judge=v.judge,
            judge_version=v.judge_version,
            note=f"reward withheld: {v.withheld}" if v.withheld else None,
            latency_s=gen.latency_s,
            tokens_in=gen.tokens_in,
            tokens_out=gen.tokens_out,
            cost=gen.cost,
        )
        self.record.turns.append(turn)
        if self._should_stop(turn):
            if self.record.mode == "recap" and not self.recapped:
                self.recapped = True
                all_ids = [s.shard_id for s in self.inst.shards]
                self._add_user(UserTurn(recap_prompt(self.inst), all_ids, "recap"))
                return
            self._finish()
            return
        asked = v.category in ("clarification", "interrogation")
        seed = derive_seed(self.record.seed, len(self.record.turns), "user")
        ut = self.simulator.next_turn(self.inst, self.revealed, gen.text, asked, seed=seed)
        if self.record.mode == "snowball":
            ut = UserTurn(snowball_prompt(self.inst, self.revealed, ut.text), ut.shard_ids, ut.note)
        self._add_user(ut)

    def fail(self, error: str) -> None:
        self.record.error = error
        self._finish()

    # -- internals ------------------------------------------------------------------------
    def _should_stop(self, turn: Turn) -> bool:
        if self.record.mode not in MULTI_TURN or self.recapped:
            return True
        if len(self.record.assistant_turns) >= self.max_turns:
            unrevealed = sum(s.shard_id not in self.revealed for s in self.inst.shards)
            self.record.capped_unrevealed = unrevealed or None
            return True
        if turn.category == "answer_attempt" and turn.score == 1.0:
            return True
        everything_out = all(s.shard_id in self.revealed for s in self.inst.shards)
        return everything_out and turn.category == "answer_attempt"

    def _add_user(self, ut: UserTurn) -> None:
        self.revealed.update(ut.shard_ids)
        self.record.turns.append(
            Turn(
                index=len(self.record.turns),
                role="user",
                content=ut.text,
                shards=list(ut.shard_ids),
                note=ut.note,
            )
        )

    def _finish(self) -> None:
        self.done = True
        score_conversation(self.record)
        self.record.finished_at = _now()


def start_conversation(
    inst: Instruction,
    mode: str,
    simulator: Simulator,
    judge: TurnJudge,
    max_turns: int | None,
    *,
    conversation_id: str,
    run_id: str,
    model: str,
    seed: int,
    run_index: int = 0,
    family: Family | None = None,
    sandbox: str | None = None,
) -> ConversationState:
    """A fresh conversation: its record and its first user turn. ``family`` is the
    instruction's family as the run grades it (default: the registered one); ``sandbox`` the
    strength model-written programs run under, recorded when the family runs any."""
    family = family or get_family(inst.task)
    record = Conversation(
        conversation_id=conversation_id,
        run_id=run_id,
        task_id=inst.task_id,
        family=family.name,
        mode=mode,
        model=model,
        simulator=simulator.name,
        judge=judge.name,
        judge_version=judge.version,
        seed=seed,
        run_index=run_index,
        n_shards=len(inst.shards),
        sandbox=sandbox if family.uses_sandbox else None,
    )
    return ConversationState(
        inst, family, record, family.system_prompt(inst), simulator, judge, max_turns
    )


def score_conversation(rec: Conversation) -> None:
    """Set a conversation's scores from its judged turns: ``final_score`` (the last answer
    attempt's score, 0 with none), ``ever_correct`` and ``first_answer_turn``. A failed
    conversation is left out of the scores (None), never 0."""
    attempts = [
        (i, t) for i, t in enumerate(rec.assistant_turns, 1) if t.category == "answer_attempt"
    ]
    if rec.error is None:
        rec.final_score = float(attempts[-1][1].score or 0.0) if attempts else 0.0
        rec.ever_correct = any(t.score == 1.0 for _, t in attempts)
    rec.first_answer_turn = attempts[0][0] if attempts else None
