"""The ICPO reward of one reply: judged, graded, and paid as a non-answer only when it is one.

:func:`judge_reply` is the one door: the conversation loop, the TRL reward function and the verl
reward all call it, so that the reward a policy is trained on is exactly the one the harness
measures. The ICPO reward of a turn (:func:`icpo_reward`, ICPO paper §3) is the evaluator's
score when the task was fully specified; on an underspecified turn it is 1 for a non-answer and
0 for an answer attempt, an empty reply, or a reply cut off by the token limit.

Reward integrity. The ICPO reward pays a non-answer on an underspecified turn only when it is a
non-answer by LiC's definitions: a clarification or interrogation asks about an aspect of *this*
task (LiC: a clarification "cannot contain a vague question"), a discussion or a hedge engages
with its content, a refusal says why. Whatever judge named the category, :func:`judge_reply`
asks :func:`withheld_reason`, and a reply that fails keeps its category (the seven are LiC's)
but earns 0, the reason recorded on the verdict (``Verdict.withheld``) and the turn
(``Turn.note``: "reward withheld: ..."). The harness, the TRL reward and the verl reward all go
through :func:`judge_reply`, so one rule decides for all three. The rule, in order:

- at most 2,000 words (rambling is not holding back; a verl rollout does not say whether it was
  cut off) and at least 3 distinct words ("?", "What?", "ok", "Hmm.", 500 "x", "What? What?
  What?", emoji and invisible characters have fewer);
- not repetitive: a reply of 12 words or more has at least half its word trigrams distinct (one
  task word 100 times, one sentence pasted 100 times have not);
- prose: a reply of 20 words or more is at least 10% function words (lorem ipsum is not);
- not a copy of the user: some word trigram of the reply is not in what the user said ("Tom
  starts with 3 apples." after "Tom starts with 3 apples." repeats it);
- it names something of the task: a content word (stopwords and words any reply to any task may
  use — answer, question, number, information, detail, task, help, problem, clarify, total,
  many ... — left out, crude stems compared: "boxes" meets "box", "ate" meets "eat") of the
  user's messages so far, of any shard of the instruction (a question about a shard not yet
  revealed asks about this task), of the identifiers of the system prompt (a database's tables,
  columns and allowed values; an actions instance's functions, parameters and allowed values),
  or of the family's :attr:`~icpo_eval.families.Family.asked_about` words (what its system
  prompt invites questions about in every task: a code function's name, parameters, input
  format and edge cases; whether more of a translated document is coming); or a number the user
  gave. No fixed text is then paid on every task ("Please clarify.", "Can you say more?", "I need
  more information.", "Interesting question!", "What's your favourite colour?");
- sentences copied from the user do not count towards naming the task ("How many books does
  Noah have now? What's your favourite colour?" asks nothing about it);
- a clarification or interrogation whose questions have two content words or more of their own
  must name the task in them ("Tom has apples. What's your favourite colour?" asks nothing
  about it); a question with fewer ("Could you provide the following?", "Which distance
  applies?") refers to the rest of the reply;
- a refusal that names nothing of the task must say why: what is missing, unclear or
  undetermined ("without more information", "the problem doesn't give any numbers", "not
  enough info", "any answer would be made up"); "I can't help with that.", "Impossible to say."
  and "That can't be determined." say not why.

Numbers in words are answers (above), and the math family reads them when a reply has no digit
(:func:`~icpo_eval.families.math.extract_number`), so that "seven" on a fully specified turn
can score. ``tests/test_reward_integrity.py`` holds the degenerate replies and the labelled
non-answers the rule is measured on.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, get_family
from icpo_eval.families.text import numbers, split_sentences, visible_text
from icpo_eval.judges import TurnJudge, user_questions
from icpo_eval.models.base import CallFailed, Messages
from icpo_eval.records import NON_ANSWERS, Instruction


def _normalised(text: str) -> str:
    """:func:`visible_text` in Unicode NFKC form ("ｗｈａｔ" is "what"), lower-cased."""
    return unicodedata.normalize("NFKC", visible_text(text)).lower()


_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are aren as at be because been
    before being below between both but by can cannot could couldn did didn do does doesn doing
    don down during each either else even ever few for from further had hadn has hasn have haven
    having he her here hers herself him himself his how i if in into is isn it its itself just
    let ll m may me might mightn more most must mustn my myself neither no nor not now o of off on
    once only or other our ours ourselves out over own re s same shall shan she should shouldn so
    some such t than that the their theirs them themselves then there these they this those
    through to too under until up upon us ve very was wasn we were weren what when where whether
    which while who whom whose why will with won would wouldn y you your yours yourself
    yourselves d""".split()
)
#: Words that name no task: what any reply to any task may say ("Please clarify.", "I need more
#: information.", "I can't help with that."), and the keywords of SQL schemas and JSON function
#: schemas, which every database or actions system prompt holds.
_GENERIC_WORDS = frozenset(
    """answer answers answered answering question questions asked ask asking number numbers
    numeric figure figures information info detail details data task tasks help helping helpful
    problem problems issue request requests clarify clarification clarifications clarifying
    specify specific specifics provide provided need needs needed know known knowing tell telling
    told say saying said think thinking thought please sure thanks thank okay ok yes yeah yep hmm
    hm um uh oh ah wow interesting great good nice fine cool value values thing things something
    anything everything nothing mean means meaning meant sorry afraid able unable calculate
    calculating calculation compute computing solve solving solved solution determine
    determined work working figure out give given gives missing enough possible impossible
    possibly guess guessing assist assistance assistant happy glad like want wanted would could
    total many much amount amounts lot lots bit little kind sort type whole part end start
    started begin result results case cases way ways step steps get got make made use using used
    find see look try trying really exactly correct right wrong true false wait moment hello hi
    hey continue go going ahead user users model language ai also actually maybe perhaps please
    message messages text context clear unclear understand understood sense idea ideas point
    matter stuff said lorem ipsum one two three first second next last again well new old sorry
    id create table integer real primary key null unique references foreign varchar blob
    description properties property string required default enum dict float boolean bool array
    object parameters name names following follow finish finished list apply applies option
    options choice prefer preferred fit fits""".split()
)
_WORD_RE = re.compile(r"[^\W\d_]+")
_TOKEN_RE = re.compile(r"[^\W_]+")
#: A non-answer longer than this is not paid: rambling is not holding back (a truncated reply
#: never is, see above; a verl rollout does not say whether it was cut off).
_MAX_NON_ANSWER_WORDS = 2000
#: At least this many distinct words: "What?", "ok", "Apples?" ask about nothing.
_MIN_DISTINCT_WORDS = 3
#: Replies of at least 12 words whose word trigrams are less than half distinct repeat
#: themselves; replies of at least 20 words of which under 10% are function words are no prose.
_REPEAT_MIN_WORDS, _REPEAT_MIN_DISTINCT = 12, 0.5
_PROSE_MIN_WORDS, _PROSE_MIN_FUNCTION = 20, 0.1
_IRREGULAR = {
    "ate": "eat",
    "bought": "buy",
    "sold": "sell",
    "gave": "give",
    "took": "take",
    "spent": "spend",
    "paid": "pay",
    "ran": "run",
    "went": "go",
    "came": "come",
    "won": "win",
    "lost": "lose",
    "found": "find",
    "kept": "keep",
    "sent": "send",
    "brought": "bring",
    "grew": "grow",
    "drew": "draw",
    "rode": "ride",
    "wrote": "write",
    "flew": "fly",
    "children": "child",
    "people": "person",
    "men": "man",
    "women": "woman",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "geese": "goose",
}


def _stem(word: str) -> str:
    """A crude stem, so that "boxes" meets "box", "saves" "saved" and "saving" meet "save",
    "cookies" meets "cookie" and "ate" meets "eat"."""
    w = _IRREGULAR.get(word, word)
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "i"
    elif w.endswith("sses"):
        w = w[:-2]
    elif len(w) > 3 and (w.endswith(("ches", "shes")) or (w.endswith("es") and w[-3] in "sxz")):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix, keep in (("ing", 5), ("ed", 4)):
        if len(w) > keep and w.endswith(suffix):
            w = w[: -len(suffix)]
            if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]
            break
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    if len(w) > 2 and w.endswith("y"):
        w = w[:-1] + "i"
    return w


def content_stems(text: str) -> set[str]:
    """Stems of the words of ``text`` that may name something of a task."""
    words = _WORD_RE.findall(_normalised(text))
    return {
        _stem(w) for w in words if len(w) > 1 and w not in _STOPWORDS and w not in _GENERIC_WORDS
    }


#: Identifiers of a system prompt: snake_case names ("loyalty_tier", "convert_currency"),
#: one-word quoted strings (JSON keys and enum values: "city", 'silver'), table names and the
#: column names of CREATE TABLE statements.
_IDENTIFIER_RES = (
    re.compile(r"\b[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+\b"),
    re.compile(r"[\"'`]([A-Za-z][\w ]{0,30}?)[\"'`]"),
    re.compile(r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?[\"'`\[]?(\w+)", re.I),
    re.compile(
        r"^\s*[\"'`\[]?(\w+)[\"'`\]]?\s+(?:INTEGER|INT|TEXT|REAL|NUMERIC|BLOB|DATE|DATETIME"
        r"|VARCHAR|CHAR|FLOAT|DOUBLE|DECIMAL|BOOLEAN|BIGINT|SMALLINT)\b",
        re.I | re.M,
    ),
)


def _identifiers(text: str) -> list[str]:
    return [m.group(m.lastindex or 0) for r in _IDENTIFIER_RES for m in r.finditer(text)]


@lru_cache(maxsize=32)
def _template_identifiers(template: str) -> frozenset[str]:
    """The identifiers a system prompt template itself writes ("function_name", "param1"):
    every instance's prompt has them."""
    from icpo_eval.paths import PROMPTS_DIR

    path = PROMPTS_DIR / template
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return frozenset(i.lower() for i in _identifiers(text))


def _task_words(inst: Instruction, family: Family, history: Messages) -> tuple[set[str], set[str]]:
    """Stems and numbers that name something of this task: the user's messages so far, every
    shard of the instruction, the identifiers of the system prompt (a database's tables and
    columns, the functions an actions instance may call, their parameters and allowed values;
    not those the template itself writes), and the family's
    :attr:`~icpo_eval.families.Family.asked_about` words."""
    said = [str(m.get("content") or "") for m in history if m.get("role") == "user"]
    said += [s.shard for s in inst.shards]
    stems: set[str] = set()
    for text in said:
        stems |= content_stems(text)
    static = _template_identifiers(family.system_prompt_template)
    for m in history:
        if m.get("role") == "system":
            own = [i for i in _identifiers(str(m.get("content") or "")) if i.lower() not in static]
            stems |= content_stems(" ".join(own))
    stems |= content_stems(" ".join(family.asked_about))
    return stems, set(numbers(" ".join(said)))


#: A refusal's reason: what is missing, unclear or undetermined ("without more information",
#: "the problem doesn't give any numbers", "not enough info", "any answer would be made up").
_REFUSAL_REASON = re.compile(
    r"\b(?:without|lacks?|lacking|missing|not enough|insufficient|unclear|ambiguous|vague"
    r"|under-?specified|incomplete|(?:does|do|did|has|have|is|are|was|were)(?:n't| not)\s+"
    r"(?:\w+\s+){0,2}?(?:give|gives|say|says|state|mention|specify|include|tell|provide"
    r"|determine|given|stated|said|specified|mentioned|provided|included|known|clear|defined)"
    r"|from what you(?:'ve| have)?\s+(?:said|told|given|written|shared)"
    r"|as (?:it is |it's )?(?:stated|written|given|posed|asked|phrased)"
    r"|made up|invent|a guess|just guess)",
    re.I,
)


def _trigrams(tokens: list[str]) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]


def _copied(sentence: str, said_grams: set[tuple[str, ...]]) -> bool:
    """A sentence of 3 words or more all of whose word trigrams the user wrote."""
    grams = _trigrams(_TOKEN_RE.findall(sentence.lower()))
    return bool(grams) and all(g in said_grams for g in grams)


def withheld_reason(
    inst: Instruction,
    response: str,
    history: Messages,
    category: str = "discussion",
    family: Family | None = None,
) -> str | None:
    """Why a reply judged a non-answer (``category``) is not one by Lost-in-Conversation's
    definitions, so that its ICPO reward is withheld; None when it engages with the task (see
    the module docstring).

    ``history`` is the conversation before the reply, system prompt included when there is one.
    The reasons: ``"too long"``, ``"too few words"``, ``"repetitive"``, ``"not prose"``,
    ``"repeats the user"``, ``"asks nothing about the task"`` (a clarification or
    interrogation), ``"names nothing of the task"`` and ``"refuses without a reason"``.
    """
    family = family or get_family(inst.task)
    text = _normalised(response or "")
    words = _WORD_RE.findall(text)
    if len(words) > _MAX_NON_ANSWER_WORDS:
        return "too long"
    if len(set(words)) < _MIN_DISTINCT_WORDS:
        return "too few words"
    tokens = _TOKEN_RE.findall(text)
    grams = _trigrams(tokens)
    if len(tokens) >= _REPEAT_MIN_WORDS and len(set(grams)) < _REPEAT_MIN_DISTINCT * len(grams):
        return "repetitive"
    if len(words) >= _PROSE_MIN_WORDS:
        function = sum(w in _STOPWORDS for w in words)
        if function < _PROSE_MIN_FUNCTION * len(words):
            return "not prose"
    said = " ".join(str(m.get("content") or "") for m in history if m.get("role") == "user")
    said_grams = set(_trigrams(_TOKEN_RE.findall(_normalised(said))))
    if grams and all(g in said_grams for g in grams):
        return "repeats the user"
    # Sentences copied from the user name the task for free: what is left must name it
    # ("How many books does Noah have now? What's your favourite colour?" asks nothing).
    text = "\n".join(s for s in split_sentences(text) if not _copied(s, said_grams))
    stems, task_numbers = _task_words(inst, family, history)
    if category in ("clarification", "interrogation"):
        # What is asked must be about the task ("What's your favourite colour?" is not),
        # whatever the rest of the reply says; a question with fewer than two content words
        # of its own ("Could you provide the following?", "Which distance applies?") refers to
        # the rest of the reply.
        asked = " ".join(user_questions(text))
        own = content_stems(asked)
        if len(own) >= 2 and not (own & stems or set(numbers(asked)) & task_numbers):
            return "asks nothing about the task"
    if content_stems(text) & stems or set(numbers(text)) & task_numbers:
        return None
    if category == "refuse":
        return None if _REFUSAL_REASON.search(text) else "refuses without a reason"
    return "names nothing of the task"


def engages_with_task(
    inst: Instruction, response: str, history: Messages, category: str = "discussion"
) -> bool:
    """Whether a reply judged a non-answer engages with its task enough to be paid
    (:func:`withheld_reason` is None)."""
    return withheld_reason(inst, response, history, category) is None


#: Failures that are not the reply's doing and keep failing the conversation (or the run) as
#: before: a model call that gave up (:class:`~icpo_eval.models.base.CallFailed`), a record or
#: setting that is wrong (:class:`~icpo_eval.errors.IcpoError`: the user's to fix), and the
#: sandbox that could not start (an ``OSError`` or ``SubprocessError`` from starting its child).
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    CallFailed,
    IcpoError,
    OSError,
    subprocess.SubprocessError,
)
#: How much of an extractor's or evaluator's error message goes on the turn.
_ERROR_CHARS = 200


def error_text(e: BaseException) -> str:
    """``"Type: message"`` of an exception, on one line, capped (:data:`_ERROR_CHARS`)."""
    try:
        msg = " ".join(str(e)[: _ERROR_CHARS * 4].split())
    except Exception:  # a message that cannot be made (str() of it raises)
        msg = ""
    text = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


@dataclass(frozen=True)
class Verdict:
    """Everything the judges say about one assistant reply."""

    category: str
    answer: str | None  # extracted answer (answer attempts only)
    score: float | None  # evaluator's score (answer attempts only)
    detail: dict[str, Any] | None  # evaluator's details (answer attempts only)
    reward: float  # ICPO reward
    judge: str  # which judge decided the category
    judge_version: str  # that judge's version (RULE_JUDGE_VERSION, an LLM judge's prompt hash)
    #: Why a non-answer on an underspecified turn earns no reward (:func:`withheld_reason`);
    #: None when it is paid, and on every other turn.
    withheld: str | None = None


def judge_reply(
    inst: Instruction,
    family: Family,
    judge: TurnJudge,
    response: str,
    history: Messages,
    fully_specified: bool,
    truncated: bool = False,
) -> Verdict:
    """Classify, extract, grade and reward one reply.

    The conversation loop and the ICPO trainer's reward function both call this, so that the
    reward a policy is trained on is exactly the one the harness measures. Grading never
    raises for the reply's sake: an exception out of ``family.extract`` or ``family.grade``
    (a reply that breaks a parser) scores 0, with ``{"error": "Type: message"}`` as the
    detail; only :data:`INFRASTRUCTURE_ERRORS` go on up.
    """
    answer = score = detail = withheld = None
    broke = False
    try:
        decision = judge.decide(inst, family, response, history)
        category, judged_by, version = decision.category, decision.judge, decision.version
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception as e:  # the rule judge asks family.extract, which the reply broke
        category, judged_by = "answer_attempt", getattr(judge, "name", "rule")
        version = getattr(judge, "version", "")
        score, detail, broke = 0.0, {"error": error_text(e)}, True
    if category == "answer_attempt" and not broke:
        try:
            answer = family.extract(inst, response)
            score, detail = family.grade(inst, answer)
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as e:  # the reply broke an extractor or evaluator: it scores 0
            score, detail = 0.0, {"error": error_text(e)}
    elif category in NON_ANSWERS and not fully_specified and not truncated:
        withheld = withheld_reason(inst, response, history, category, family)
    reward = icpo_reward(fully_specified, category, score, truncated, withheld is None)
    return Verdict(category, answer, score, detail, reward, judged_by, version, withheld)


def icpo_reward(
    fully_specified: bool,
    category: str,
    score: float | None,
    truncated: bool = False,
    engaged: bool = True,
) -> float:
    """The ICPO reward of one assistant turn (ICPO paper, §3).

    Fully specified: the evaluator's score (0 when the turn gave no answer). Underspecified: 1
    for a non-answer (clarification, interrogation, discussion, hedge, refuse), 0 for an answer
    attempt or an empty reply; a truncated reply is never a non-answer, nor one that does not
    engage with the task (``engaged`` False: :func:`withheld_reason`; see module doc).
    """
    if fully_specified:
        return float(score) if (category == "answer_attempt" and score is not None) else 0.0
    if truncated or not engaged:
        return 0.0
    return 1.0 if category in NON_ANSWERS else 0.0
