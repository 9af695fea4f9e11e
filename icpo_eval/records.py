"""Typed records and their JSON round-trip.

Everything icpo-eval writes or reads is one of these dataclasses, serialised as one JSON object.
Instructions use the Lost-in-Conversation (LiC) layout so that LiC data loads unchanged:
``{"task_id", "task", "shards": [{"shard_id", "shard"}], ...family fields}``. Family fields that
the engine does not interpret (``question``, ``answer``, test cases ...) are kept in
:attr:`Instruction.fields` and written back at the top level.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from icpo_eval.errors import IcpoError

#: The LiC turn taxonomy (Laban et al. 2025), as used by ICPO.
CATEGORIES: tuple[str, ...] = (
    "answer_attempt",
    "clarification",
    "interrogation",
    "discussion",
    "hedge",
    "refuse",
    "missing",
)
#: Categories in which the assistant does not commit to an answer (ICPO rewards these on
#: underspecified turns). ``missing`` (an empty reply) is not a non-answer: it says nothing.
NON_ANSWERS: frozenset[str] = frozenset(
    {"clarification", "interrogation", "discussion", "hedge", "refuse"}
)

MODES: tuple[str, ...] = ("full", "concat", "sharded", "recap", "snowball")
SANDBOX_MODES: tuple[str, ...] = ("auto", "strict")


def mode_key(mode: str) -> tuple[int, str]:
    """Sort key for modes: the order of :data:`MODES`, unknown modes last by name."""
    return (MODES.index(mode) if mode in MODES else len(MODES), mode)


@dataclass
class Shard:
    shard_id: int
    shard: str


@dataclass
class Instruction:
    """One task instance. Shard 1 states the intent; later shards add conditions."""

    task_id: str
    task: str  # the family name: "math", "code", ...
    shards: list[Shard]
    #: Shard ids without which the task cannot be solved; ``None`` means "all of them".
    required_shards: list[int] | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def required_ids(self) -> set[int]:
        if self.required_shards is None:
            return {s.shard_id for s in self.shards}
        return set(self.required_shards)

    def shard(self, shard_id: int) -> Shard:
        for s in self.shards:
            if s.shard_id == shard_id:
                return s
        raise KeyError(shard_id)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "task_id": self.task_id,
            "task": self.task,
            "shards": [{"shard_id": s.shard_id, "shard": s.shard} for s in self.shards],
        }
        if self.required_shards is not None:
            d["required_shards"] = list(self.required_shards)
        d.update(self.fields)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "instruction") -> Instruction:
        """Build from LiC-style JSON; raise :class:`IcpoError` naming ``where`` if malformed."""
        if not isinstance(d, dict):
            raise IcpoError(f"{where}: expected a JSON object, got {type(d).__name__}")
        missing = [k for k in ("task_id", "task", "shards") if k not in d]
        if missing:
            raise IcpoError(f"{where}: missing field(s) {', '.join(missing)}")
        raw_shards = d["shards"]
        if not isinstance(raw_shards, list) or not raw_shards:
            raise IcpoError(f"{where}: 'shards' must be a non-empty list")
        shards = []
        for s in raw_shards:
            if not isinstance(s, dict) or "shard_id" not in s or "shard" not in s:
                raise IcpoError(f"{where}: each shard needs 'shard_id' and 'shard'")
            try:
                shards.append(Shard(int(s["shard_id"]), str(s["shard"])))
            except (TypeError, ValueError):
                raise IcpoError(f"{where}: shard_id {s['shard_id']!r} is not an integer") from None
        shards.sort(key=lambda s: s.shard_id)
        fields = {
            k: v for k, v in d.items() if k not in ("task_id", "task", "shards", "required_shards")
        }
        req = d.get("required_shards")
        return cls(
            task_id=str(d["task_id"]),
            task=str(d["task"]),
            shards=shards,
            required_shards=[int(x) for x in req] if req is not None else None,
            fields=fields,
        )


class _Json:
    """JSON round-trip of a record dataclass: ``to_dict`` is every field; ``from_dict`` keeps
    the fields the class knows (a record written by another version may carry more)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def known_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return {k: v for k, v in d.items() if k in names}

    @classmethod
    def from_dict(cls: type[_R], d: dict[str, Any]) -> _R:
        return cls(**cls.known_fields(d))


_R = TypeVar("_R", bound=_Json)


@dataclass
class Turn(_Json):
    """One message of a conversation, with everything the judges said about it."""

    index: int
    role: str  # "user" or "assistant" (the system prompt is not a turn)
    content: str
    #: User turns: the shard ids revealed in this turn.
    shards: list[int] = field(default_factory=list)
    #: Assistant turns: were all required shards revealed before this turn?
    fully_specified: bool | None = None
    category: str | None = None
    answer: str | None = None  # extracted answer (answer attempts only)
    score: float | None = None  # evaluator's score (answer attempts only)
    reward: float | None = None  # ICPO reward of this assistant turn
    truncated: bool = False  # generation hit the token limit
    judge: str | None = None  # which judge decided the category
    judge_version: str | None = None  # its version (None in records written before versions)
    latency_s: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None
    #: User turns: how the simulator chose what to say ("next", "answered_question",
    #: "irrelevant_question", "no_more_shards"). Assistant turns: why a non-answer on an
    #: underspecified turn earned no reward ("reward withheld: too few words", see
    #: :func:`icpo_eval.reward.withheld_reason`); None when nothing was withheld.
    note: str | None = None
    #: Assistant answer attempts: what the evaluator found beyond the score, e.g.
    #: ``{"passed": 3, "total": 4}`` for code. JSON-serialisable; None when it had nothing to add.
    detail: dict[str, Any] | None = None


@dataclass
class Conversation(_Json):
    conversation_id: str
    run_id: str
    task_id: str
    family: str
    mode: str
    model: str
    simulator: str
    judge: str
    seed: int
    run_index: int
    #: Version of the judge (``RULE_JUDGE_VERSION``, an LLM judge's prompt hash); each turn
    #: records the version that decided it. None in records written before judges had versions.
    judge_version: str | None = None
    #: Set by ``icpo-eval rejudge``: the run folder whose conversations were judged again (the
    #: trajectory is as it ran there, under that run's judge; categories, scores and rewards are
    #: this record's judge's).
    rejudged_from: str | None = None
    #: Number of shards of the instruction (for progress metrics; None in older records).
    n_shards: int | None = None
    turns: list[Turn] = field(default_factory=list)
    #: Score of the last answer attempt; 0 when the assistant never answered.
    final_score: float | None = None
    ever_correct: bool | None = None
    #: 1-based index among assistant turns of the first answer attempt; None if none.
    first_answer_turn: int | None = None
    error: str | None = None
    #: Shards never revealed when the conversation reached its turn cap (None when it ended
    #: otherwise): with ``--max-turns`` below the shard count, a model that waits to hear
    #: everything never can.
    capped_unrevealed: int | None = None
    #: For families that run model-written code: ``strong`` (under bubblewrap) or ``weak`` (the
    #: fallback layers; see :func:`icpo_eval.sandbox.strength`); None for the others.
    sandbox: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    version: str | None = None

    @property
    def assistant_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.role == "assistant"]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Conversation:
        kwargs = cls.known_fields(d)
        kwargs["turns"] = [Turn.from_dict(t) for t in d.get("turns", [])]
        return cls(**kwargs)


@dataclass
class RunSpec(_Json):
    """Everything that determines a run. Written to ``run.json``; a resumed run must match."""

    model: str
    tasks: str = "math"
    modes: list[str] = field(default_factory=lambda: ["full", "concat", "sharded"])
    runs: int = 1
    limit: int | None = None
    simulator: str = "rule"
    judge: str = "rule"
    seed: int = 0
    #: Cap on a multi-turn conversation's assistant turns; None: the instruction's shard count
    #: plus :data:`TURN_MARGIN` (every shard can be revealed and answered).
    max_turns: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    #: Conversations a local model decodes together; None: ``auto``, the backend picks
    #: (:func:`~icpo_eval.models.local.backend.auto_batch_size`). Not an identity field.
    batch_size: int | None = None
    out: str = ""
    version: str = ""
    # How API calls travel (models/api.py). None of these changes a reply, so none is an
    # identity field: a run may be resumed against another replica, with more concurrency or
    # without the cache. The simulator and the judge (above) are identity fields.
    concurrency: int = 8
    api_base: list[str] = field(default_factory=list)
    simulator_api_base: list[str] = field(default_factory=list)
    judge_api_base: list[str] = field(default_factory=list)
    cache: bool = True
    timeout: float = 120.0
    max_attempts: int = 6
    retry_wait: float = 1.0
    transport: str = "auto"
    #: Evaluate an ICPO checkpoint on instructions it was trained on (refused by default).
    allow_train_overlap: bool = False
    #: Refuse task records of tasks icpo-eval does not have, instead of skipping them.
    strict: bool = False
    #: How answers of families that need a model to grade them are graded (the summary
    #: family): ``rule`` (the offline approximation) or ``llm:MODEL``.
    grader: str = "rule"
    grader_api_base: list[str] = field(default_factory=list)
    #: ``auto``: run model-written code under the strongest sandbox the machine allows, saying so
    #: when it is the weak one; ``strict``: refuse to run it without the kernel boundary.
    sandbox: str = "auto"
    #: Spread the conversations over this many Ray actors (:mod:`icpo_eval.distributed`);
    #: None: one process, and Ray is never imported. Where a conversation runs changes none of
    #: its turns, so neither this nor ``ray_address`` is an identity field.
    workers: int | None = None
    #: The Ray cluster to join (``ray start --head`` prints it); None: ``RAY_ADDRESS``, else a
    #: local Ray instance started for the run.
    ray_address: str | None = None

    #: Fields that change what gets generated. A resume with a different value is refused.
    IDENTITY_FIELDS = (
        "model",
        "tasks",
        "simulator",
        "judge",
        "seed",
        "max_turns",
        "temperature",
        "top_p",
        "max_new_tokens",
        "grader",
    )

    def check(self, model: bool = True) -> None:
        """Refuse a spec that cannot run, with one line naming the setting, before any work.

        ``model=False`` leaves the model string alone: a caller that hands the runner its own
        backend names the model as it likes.
        """
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise IcpoError(
                f"unknown mode(s) {', '.join(bad) or '(none)'} (known: {', '.join(MODES)})"
            )
        for name in (
            "runs",
            "max_turns",
            "max_new_tokens",
            "batch_size",
            "concurrency",
            "workers",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise IcpoError(f"--{name.replace('_', '-')} must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise IcpoError("--limit must be at least 1")
        if not 0.0 <= self.temperature <= 5.0:
            raise IcpoError(f"--temperature must be between 0 and 5, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise IcpoError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.timeout <= 0 or self.retry_wait < 0:
            raise IcpoError("--timeout must be above 0 and --retry-wait at least 0")
        if self.max_attempts < 1:
            raise IcpoError("--max-attempts must be at least 1")
        if self.grader != "rule" and not (
            self.grader.startswith("llm:") and self.grader[4:].strip()
        ):
            raise IcpoError(f"--grader {self.grader!r}: rule or llm:MODEL")
        if self.sandbox not in SANDBOX_MODES:
            raise IcpoError(f"--sandbox {self.sandbox!r}: one of {', '.join(SANDBOX_MODES)}")
        if model:
            from icpo_eval.models import check_model_name

            check_model_name(self.model)


#: Turns beyond the shard count that a multi-turn conversation may take by default: room for
#: questions the simulator answers without revealing a shard, and for an answer after the last.
TURN_MARGIN = 2


def turn_cap(max_turns: int | None, inst: Instruction) -> int:
    """The cap on a conversation's assistant turns: ``max_turns`` when given, else the
    instruction's shard count plus :data:`TURN_MARGIN`."""
    return max_turns if max_turns is not None else len(inst.shards) + TURN_MARGIN


def conversation_id(task_id: str, mode: str, run_index: int, model: str) -> str:
    """Deterministic id: the same (task, mode, run, model) always gets the same id."""
    digest = hashlib.sha1(model.encode()).hexdigest()[:8]
    return f"{task_id}:{mode}:r{run_index}:{digest}"


def derive_seed(base_seed: int, *parts: object) -> int:
    """A 32-bit seed derived from a base seed and any identifying parts (stable across runs)."""
    key = json.dumps([base_seed, *[str(p) for p in parts]])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


# --------------------------------------------------------------------------------------------
# Reading untrusted JSON (task files, LiC fields, test cases)

#: Caps on task data, so that a hostile file is one clear error rather than a hang, a crash
#: deep in a run or gigabytes of memory: how deep a record's JSON nests, and
#: how many digits one of its integers may have (Python itself stops at 4,300).
MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 1000
#: What :func:`json.loads` raises on hostile text: ValueError (JSONDecodeError, an int past
#: Python's digit limit), RecursionError past the recursion limit, MemoryError.
JSON_ERRORS = (ValueError, RecursionError, MemoryError)


def check_json_shape(value: Any, where: str) -> None:
    """Refuse decoded JSON nested deeper than :data:`MAX_JSON_DEPTH` or holding an integer of
    more than :data:`MAX_INT_DIGITS` digits, with one IcpoError naming ``where``. Iterative, so
    it cannot itself overflow the stack; linear in the number of values."""
    max_bits = int(MAX_INT_DIGITS * 3.33) + 1
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (list, tuple, dict)):
            if depth >= MAX_JSON_DEPTH:
                raise IcpoError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH}; refused")
            items = v.values() if isinstance(v, dict) else v
            stack.extend((x, depth + 1) for x in items)
        elif isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > max_bits:
            raise IcpoError(f"{where}: an integer of more than {MAX_INT_DIGITS} digits; refused")


def loads_checked(text: str | bytes, where: str) -> Any:
    """:func:`json.loads` and :func:`check_json_shape`; one IcpoError naming ``where``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise IcpoError(f"{where}: malformed JSON (line {e.lineno}: {e.msg})") from None
    except JSON_ERRORS as e:
        raise IcpoError(f"{where}: malformed JSON ({type(e).__name__}: {str(e)[:100]})") from None
    check_json_shape(value, where)
    return value


#: The longest string :func:`decode_field` reads as a literal.
MAX_FIELD_CHARS = 64 * 2**20


def decode_field(value: Any, where: str = "field") -> Any:
    """A record field that may arrive as a *string* holding JSON or a Python literal (LiC's
    release writes ``metadata``, ``reference_answer``, ``raw_table`` ... so; Arrow columns need
    one type across the records of every task): the decoded value, else ``value`` unchanged.

    Only a string that starts like a container (``[``, ``{``, ``(``) is decoded, first as JSON,
    then with :func:`ast.literal_eval` (literals only, never ``eval``); the result passes
    :func:`check_json_shape`. A string of more than :data:`MAX_FIELD_CHARS` is refused.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text or text[0] not in "[{(":
        return value
    if len(text) > MAX_FIELD_CHARS:
        raise IcpoError(f"{where}: a string field of {len(text)} characters; refused")
    try:
        decoded = json.loads(text)
    except JSON_ERRORS:
        try:
            literal = ast.literal_eval(text)
            # As JSON data: tuples become lists; sets, bytes, complex numbers stay a string.
            decoded = json.loads(json.dumps(literal))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return value
    check_json_shape(decoded, where)
    return decoded
