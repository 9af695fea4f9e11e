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

The ``llm`` simulator (:class:`LLMSimulator`, ``--simulator llm:MODEL`` or a profile in
``simulators/``) is the lazy user of Lost-in-Conversation: one shard per turn, rephrased, never a
question, answering JSON ``{"response", "shard_id"}`` from ``prompts/simulator_llm.j2``. The shard
id is validated (an id that is not among the unrevealed shards, or unreadable JSON, is retried
with another sample); after ``retries`` bad answers the rule simulator speaks instead and the
turn's note says so (``rule_fallback: <why>/<rule note>``). Its first turn is shard 1 verbatim,
and once every shard is out it says so like the rule simulator: no call is needed for either.

Stop conditions are not the simulator's business: the conversation loop decides them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from icpo_eval.errors import IcpoError
from icpo_eval.paths import SIMULATORS_DIR
from icpo_eval.prompting import first_json_object, render_prompt
from icpo_eval.records import Instruction, Shard, derive_seed

if TYPE_CHECKING:
    from icpo_eval.models.api import ApiSettings

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
        self,
        inst: Instruction,
        revealed: set[int],
        assistant_text: str,
        asked_question: bool,
        seed: int = 0,
    ) -> UserTurn:
        """``seed`` is unused here (the rule simulator is deterministic)."""
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


class Simulator(Protocol):
    name: str

    def first_turn(self, inst: Instruction) -> UserTurn: ...

    def next_turn(
        self,
        inst: Instruction,
        revealed: set[int],
        assistant_text: str,
        asked_question: bool,
        seed: int = 0,
    ) -> UserTurn: ...


class LLMSimulator:
    """The lazy user, played by an LLM behind an API (see module doc)."""

    def __init__(
        self,
        model: str,
        api: ApiSettings | None = None,
        name: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 300,
        template: str = "simulator_llm.j2",
        retries: int = 2,
    ):
        from icpo_eval.models.api import ApiClient

        self.model = model
        self.name = name or f"llm:{model}"
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.template = template
        self.retries = max(0, retries)
        self.client = ApiClient(model, api)
        self.rule = RuleSimulator()

    def first_turn(self, inst: Instruction) -> UserTurn:
        return self.rule.first_turn(inst)

    def next_turn(
        self,
        inst: Instruction,
        revealed: set[int],
        assistant_text: str,
        asked_question: bool,
        seed: int = 0,
    ) -> UserTurn:
        from icpo_eval.models.base import GenParams

        hidden = [s for s in inst.shards if s.shard_id not in revealed]
        if not hidden:
            return self.rule.next_turn(inst, revealed, assistant_text, asked_question)
        prompt = render_prompt(
            self.template,
            question=inst.fields.get("question") or "\n".join(s.shard for s in inst.shards),
            revealed=[s for s in inst.shards if s.shard_id in revealed],
            hidden_json=json.dumps(
                [{"shard_id": s.shard_id, "shard": s.shard} for s in hidden], ensure_ascii=False
            ),
            assistant_text=assistant_text,
            asked_question=asked_question,
        )
        messages = [{"role": "user", "content": prompt}]
        params = GenParams(self.temperature, 1.0, self.max_tokens)
        valid = {s.shard_id for s in hidden}
        why = ""
        for attempt in range(self.retries + 1):
            # Each retry is another sample (another cache key): the same request would only
            # return the same bad answer. CallFailed (the API gave up) propagates: the
            # conversation fails rather than silently changing simulator.
            gen = self.client.complete(messages, params, "simulator", derive_seed(seed, attempt))
            parsed, why = parse_simulator_reply(gen.text, valid)
            if parsed is not None:
                return UserTurn(parsed[0], [parsed[1]], "llm")
        ut = self.rule.next_turn(inst, revealed, assistant_text, asked_question)
        return UserTurn(ut.text, ut.shard_ids, f"rule_fallback: {why}/{ut.note}")


def parse_simulator_reply(text: str, valid_ids: set[int]) -> tuple[tuple[str, int] | None, str]:
    """((response, shard_id), "") for a valid reply, else (None, why it is not)."""
    obj = first_json_object(text)
    if not isinstance(obj, dict):
        return None, "no JSON object"
    response, sid = obj.get("response"), obj.get("shard_id")
    if not isinstance(response, str) or not response.strip():
        return None, "empty response"
    try:
        sid = int(sid)
    except (TypeError, ValueError):
        return None, f"bad shard_id {sid!r}"
    if sid not in valid_ids:
        return None, f"shard_id {sid} not unrevealed"
    return (response.strip(), sid), ""


def load_profile(name: str) -> dict[str, Any] | None:
    """``simulators/<name>.yaml`` (or a path to a YAML file); None if there is none."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml") or not path.exists():
        path = SIMULATORS_DIR / f"{name}.yaml"
    if not path.exists():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise IcpoError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise IcpoError(f"{path}: a simulator profile is a YAML mapping")
    return data


#: Simulator strategies by name: what a profile's ``strategy`` (or ``--simulator KIND[:MODEL]``)
#: selects. A factory gets the profile (a mapping; ``name`` always set) and how API calls travel.
SimulatorFactory = Callable[[dict[str, Any], "ApiSettings | None"], Simulator]
_STRATEGIES: dict[str, SimulatorFactory] = {}


def register_strategy(name: str) -> Callable[[SimulatorFactory], SimulatorFactory]:
    """Decorator: make a simulator factory available as a profile ``strategy``."""

    def add(factory: SimulatorFactory) -> SimulatorFactory:
        _STRATEGIES[name] = factory
        return factory

    return add


@register_strategy("rule")
def _rule_simulator(profile: dict[str, Any], api: ApiSettings | None) -> Simulator:
    return RuleSimulator()


@register_strategy("llm")
def _llm_simulator(profile: dict[str, Any], api: ApiSettings | None) -> Simulator:
    name = profile["name"]
    if not profile.get("model"):
        raise IcpoError(f"simulator profile {name!r}: strategy llm needs a model")
    return LLMSimulator(
        str(profile["model"]),
        api,
        name=name,
        temperature=float(profile.get("temperature", 0.0)),
        max_tokens=int(profile.get("max_tokens", 300)),
        template=str(profile.get("template", "simulator_llm.j2")),
        retries=int(profile.get("retries", 2)),
    )


def get_simulator(name: str, api: ApiSettings | None = None) -> Simulator:
    """``rule``, ``llm:MODEL``, or the name of a profile in ``simulators/`` (or a YAML path).

    The first two are profiles written inline (``{"strategy": "rule"}``, ``{"strategy": "llm",
    "model": MODEL}``); every profile then goes through its strategy's factory. ``api`` says how
    the LLM simulator's calls travel (api base, concurrency, cache, retries).
    """
    if name == "rule":
        profile: dict[str, Any] | None = {"strategy": "rule"}
    elif name.startswith("llm:") and len(name) > 4:
        profile = {"strategy": "llm", "model": name[4:], "name": name}
    else:
        profile = load_profile(name)
    if profile is None:
        known = sorted(p.stem for p in SIMULATORS_DIR.glob("*.yaml"))
        raise IcpoError(
            f"unknown simulator {name!r} (use rule, llm:MODEL or a profile: {', '.join(known)})"
        )
    strategy = profile.get("strategy", "rule")
    factory = _STRATEGIES.get(strategy) if isinstance(strategy, str) else None
    if factory is None:
        raise IcpoError(f"simulator profile {name!r}: unknown strategy {strategy!r}")
    return factory({**profile, "name": str(profile.get("name") or name)}, api)
