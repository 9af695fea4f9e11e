"""User simulators: what the user says next in a sharded conversation.

The ``rule`` simulator (the offline default) is deterministic:

- it reveals the next unrevealed shard, in order;
- if the assistant asked a question (the judge classified its turn as a clarification or an
  interrogation), it instead reveals the unrevealed shard that best matches the question: the one
  sharing the most content words with it, each word weighted by 1 / (number of this
  instruction's shards containing it), and words found in every shard (the character's name)
  weighted 0, since they cannot tell shards apart;
- a question that matches no unrevealed shard gets "I don't know." followed by the next shard;
- when every shard is out and the assistant still has not answered, it says so and asks for an
  answer.

Stop conditions are not the simulator's business: the conversation loop decides them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from icpo_eval.errors import IcpoError
from icpo_eval.records import Instruction, Shard

NO_MORE_SHARDS = "That is all the information I have. Please give me your best answer."
DONT_KNOW = "I don't know."

_STOPWORDS = frozenset(
    """a an the and or but if then so of to in on at by for with from as is are was were be been
    being do does did done have has had having i you he she it we they me him her them my your his
    its our their this that these those what which who whom whose when where why how many much
    there here can could would should will shall may might must not no yes please tell know let
    any some each every all more most other another such only own same than too very just also
    about into over under again once up down out off""".split()
)


@dataclass
class UserTurn:
    text: str
    shard_ids: list[int]
    #: How the text was chosen: next | answered_question | irrelevant_question | no_more_shards
    note: str


def _words(text: str) -> set[str]:
    out = set()
    for w in re.findall(r"[a-z]+", text.lower()):
        if w in _STOPWORDS or len(w) < 3:
            continue
        # A crude stem so that "boxes"/"box" and "apples"/"apple" meet.
        for suffix in ("ies", "es", "s"):
            if w.endswith(suffix) and len(w) - len(suffix) >= 3:
                w = w[: -len(suffix)] + ("y" if suffix == "ies" else "")
                break
        out.add(w)
    return out


def _question_text(response: str) -> str:
    """The sentences of a response that ask something (or the whole reply if none ends in ?)."""
    sentences = re.split(r"(?<=[.?!])\s+|\n+", response)
    asked = [s for s in sentences if "?" in s]
    return " ".join(asked) if asked else response


class RuleSimulator:
    """Deterministic shard revealer that answers the question asked (see module doc)."""

    name = "rule"

    def first_turn(self, inst: Instruction) -> UserTurn:
        first = inst.shards[0]
        return UserTurn(first.shard, [first.shard_id], "next")

    def next_turn(
        self, inst: Instruction, revealed: set[int], assistant_text: str, asked_question: bool
    ) -> UserTurn:
        hidden = [s for s in inst.shards if s.shard_id not in revealed]
        if not hidden:
            return UserTurn(NO_MORE_SHARDS, [], "no_more_shards")
        if not asked_question:
            return UserTurn(hidden[0].shard, [hidden[0].shard_id], "next")
        best = self.best_match(inst, hidden, assistant_text)
        if best is None:
            return UserTurn(
                f"{DONT_KNOW} {hidden[0].shard}", [hidden[0].shard_id], "irrelevant_question"
            )
        return UserTurn(best.shard, [best.shard_id], "answered_question")

    @staticmethod
    def best_match(inst: Instruction, hidden: list[Shard], question: str) -> Shard | None:
        """The hidden shard sharing the most (rarity-weighted) content words with the question."""
        asked = _words(_question_text(question))
        shard_words = {s.shard_id: _words(s.shard) for s in inst.shards}
        df: dict[str, int] = {}
        for words in shard_words.values():
            for w in words:
                df[w] = df.get(w, 0) + 1
        best, best_score = None, 0.0
        for s in hidden:  # in shard order, so ties go to the earliest shard
            common = asked & shard_words[s.shard_id]
            score = sum(1.0 / df[w] for w in common if df[w] < len(inst.shards))
            if score > best_score + 1e-9:
                best, best_score = s, score
        return best


def get_simulator(name: str) -> RuleSimulator:
    if name == "rule":
        return RuleSimulator()
    raise IcpoError(f"unknown simulator {name!r} (available offline: rule)")
