"""Turn judges and the ICPO reward.

A judge is a pure function of (instruction, response, history): it names which of the seven
Lost-in-Conversation categories an assistant turn falls into (Laban et al. 2025, as used by ICPO):

- ``answer_attempt``: commits to a complete answer (right or wrong);
- ``clarification``: a short reply asking the user one question;
- ``interrogation``: several questions to the user;
- ``discussion``: talks about the task without answering, asking or hedging;
- ``hedge``: several answers, one per interpretation ("if ..., then 50; if ..., then 60");
- ``refuse``: declines to answer;
- ``missing``: empty.

The ``rule`` judge below is the offline default. It works on surface cues, in this order:
empty → hedge cues → an explicit final answer → questions/requests addressed to the user →
refusal phrases → an implicit numeric conclusion → discussion. Its accuracy is measured in
``tests/test_judges.py`` on hand-labelled responses (a development set and a held-out set).
Invisible characters (zero-width spaces, joiners) do not count: a reply of only those is
``missing``. A reply without any digit is read with its numbers in words as digits
(:func:`~icpo_eval.families.text.digits_for_number_words`), so that "seven", "I think it's
seven." and "twelve apples" commit to a number as "7" would; number words in working ("the sum
of four numbers") are not read as results, only a closing statement of one.

Conventions for borderline replies (the labelled sets follow them):

- one committed final number makes an answer attempt, whatever else the reply holds: working with
  rhetorical questions, a closing offer ("Anything else?"), an uncertain tone, one stated
  assumption leading to one outcome;
- a reply that ends by stating a number of the very thing the user asks about ("Noah has 10
  brownies." after "How many brownies ...?") is an answer attempt even when the number is one
  the user gave: echoing the user must not pass for holding back;
- two or more outcomes under different assumptions make a hedge (also as a table or several
  boxed answers), even when one is preferred or the reply ends by asking which was meant;
- questions and direct requests addressed to the user count, one or several; a self-answered
  question is working; one question in a reply of more than 100 words is a discussion;
- a short decline, even one naming what is missing, is a refusal; restating facts, partial
  results and explaining what is needed, without asking, is a discussion.

Truncation (the reply hit the token limit) is not a category: it is recorded on the turn, and
the ICPO reward never counts a truncated reply as a non-answer, so that a policy cannot earn the
"asked instead of guessing" reward by rambling until it is cut off.

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
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, get_family
from icpo_eval.families.text import (
    NUMBER_PATTERN,
    digits_for_number_words,
    numbers,
    split_sentences,
)
from icpo_eval.models.base import Messages
from icpo_eval.prompting import first_json_object, render_prompt
from icpo_eval.records import CATEGORIES, NON_ANSWERS, Instruction

if TYPE_CHECKING:
    from icpo_eval.models.api import ApiSettings


_NUM = NUMBER_PATTERN

# An explicit final answer: a marker followed, within its sentence, by a number; or code.
_EXPLICIT_ANSWER = [
    re.compile(rf"\banswer\b\s*(?:is|:|=|\*\*:?)[^.?!\n]{{0,60}}?{_NUM}", re.I),
    re.compile(rf"####\s*{_NUM}"),
    re.compile(r"\\boxed\{"),
    re.compile(r"\b(?:this|that) is the (?:final |correct )?answer\b", re.I),
    re.compile(r"```"),
]
# Words that introduce a conclusion; with a new number in the same sentence, an answer.
_CONCLUSION = re.compile(
    r"\b(?:therefore|thus|hence|so|in total|altogether|overall|in all|total)\b", re.I
)
_CONDITIONAL = re.compile(
    rf"\b(?:if|assuming|suppose|supposing|in case)\b[^.?!\n]{{0,160}}?{_NUM}", re.I
)
# "with 4 boxes, the total would be 20": an outcome tied to an assumed value.
_WITH_OUTCOME = re.compile(
    rf"\bwith\b[^.;?!\n]{{0,50}}?{_NUM}[^.;?!\n]{{0,40}}?"
    rf"(?:would be|that's|it's|it is|you'd get|gives|makes)[^.;?!\n]{{0,20}}?{_NUM}",
    re.I,
)
_EITHER = re.compile(rf"\beither\s+{_NUM}[^.?!\n]{{0,30}}?\bor\s+{_NUM}", re.I)
_HEDGE_CUES = re.compile(
    r"\b(?:depending on|it depends|depends on|but if|or if|otherwise|alternatively|"
    r"(?:case|scenario|option|interpretation) (?:1|2|one|two|a|b)\b|"
    r"(?:two|several|a few|multiple|different) (?:possible )?(?:interpretations|readings|cases|"
    r"scenarios|possibilities|answers))",
    re.I,
)
_TABLE_ROW = re.compile(r"^\s*\|.*\d.*\|\s*$", re.M)
_REFUSE = re.compile(
    r"\b(?:i(?:'m| am)? (?:sorry|afraid)|i can(?:no|')t|i can ?not|i(?:'m| am) (?:not able|unable)"
    r"|i won'?t (?:be able|guess|answer)|i(?:'d| would) rather not"
    r"|unable to (?:answer|solve|help|determine|compute|calculate)"
    r"|(?:not|isn't|is not) possible to (?:answer|solve|determine|say|calculate|compute)"
    r"|impossible to (?:answer|solve|determine|say|calculate|compute)"
    r"|(?:not|isn't|is not|there's not|there is not) enough (?:info|information|detail|data)"
    r"|can(?:no|')t be (?:answered|solved|determined|calculated|computed)"
    r"|(?:i )?(?:must|have to|need to|will) (?:decline|pass)|not (?:something )?i can help)",
    re.I,
)
# A request for information phrased without a question mark.
_REQUEST = re.compile(
    r"^(?:please|kindly|could you|can you|would you|let me know|tell me|i(?:'d| would) need "
    r"(?:you )?to know|i need to know|provide|share|specify|clarify|what is|what are|how many|"
    r"how much)\b",
    re.I,
)
# Closing offers that end many answers: not questions about the task.
_CLOSING = re.compile(
    r"\b(?:anything else|any other questions?|further questions|more questions|other questions|"
    r"need (?:any )?(?:more )?help|help (?:you )?with (?:anything|something) else|"
    r"hope (?:this|that) helps|let me know if|feel free|would you like me to|shall i|"
    r"want me to|(?:does|did) (?:that|this) (?:make sense|help))\b",
    re.I,
)
# The start of a sentence that answers the question just before it (a rhetorical step).
_SELF_ANSWER = re.compile(r"^(?:it|that|this) (?:means|is|refers)\b|^(?:well|so),", re.I)
_QUOTED = re.compile(r"\"[^\"\n]*\"|“[^”\n]*”")
_CLARIFICATION_MAX_WORDS = 100
_REFUSAL_MAX_WORDS = 80


def _user_questions(text: str) -> list[str]:
    """Questions and requests addressed to the user (rhetorical steps and closings excluded)."""
    sents = split_sentences(_QUOTED.sub('""', text))
    asked = []
    for i, s in enumerate(sents):
        if _CLOSING.search(s):
            continue
        is_question = "?" in s
        if not is_question and not _REQUEST.match(re.sub(r"^\d+[.)]\s*", "", s)):
            continue
        if not is_question and re.search(_NUM, s) and "=" in s:
            continue  # "What is 3 + 5 = 8." is working, not a request
        # A question answered right after it in the reply is a rhetorical step of the working.
        nxt = sents[i + 1] if i + 1 < len(sents) else ""
        if is_question and nxt and (_SELF_ANSWER.match(nxt) or ("=" in nxt and numbers(nxt))):
            continue
        asked.append(s)
    return asked


def _is_hedge(text: str) -> bool:
    """Several answers, one per assumption."""
    boxed = set(re.findall(r"\\boxed\{([^}]*)\}", text))
    if len(boxed) >= 2 or _EITHER.search(text):
        return True
    conditionals = len(_CONDITIONAL.findall(text)) + len(_WITH_OUTCOME.findall(text))
    if conditionals >= 2:
        # Conditional steps that end in one stated conclusion are working, not a hedge.
        last = split_sentences(text)[-1]
        concluded = re.match(r"(?:so|therefore|thus|hence)\b", last, re.I)
        return not (concluded and not re.search(r"\b(?:if|either|or)\b", last, re.I))
    cue = _HEDGE_CUES.search(text)
    return bool(cue and (conditionals >= 1 or len(_TABLE_ROW.findall(text)) >= 2))


def _commits_to_new_number(sentence: str, known: set[str]) -> bool:
    """A statement (not a question) giving a number that the user never mentioned."""
    if "?" in sentence:
        return False
    return any(n not in known for n in numbers(sentence))


def _asked_unit(question: str) -> str | None:
    """What the user's question counts: "How many cookies ..." -> "cookie"; money -> "$"."""
    if re.search(
        r"\bhow much (?:money|does|did|do|will|is|are)\b|\bdollars?\b|\bcosts?\b", question, re.I
    ):
        return "$"
    m = re.search(r"\bhow many ([a-z]+)", question, re.I)
    return m.group(1).lower().rstrip("s") if m else None


def _states_asked_quantity(sentence: str, unit: str | None) -> bool:
    """ "Noah has 10 brownies." after "How many brownies ...?": a number of the asked thing."""
    if unit is None or "?" in sentence or not numbers(sentence):
        return False
    if unit == "$":
        return "$" in sentence or re.search(r"\bdollars?\b", sentence, re.I) is not None
    # The number must count the asked thing ("10 brownies", "12 more cookies"), not something
    # else in the same sentence ("Each group has 6 students." does not say how many groups).
    counted = rf"{_NUM}\s+(?:[a-z]+\s+){{0,2}}?{re.escape(unit)}(?:e?s)?\b"
    return re.search(counted, sentence, re.I) is not None


def rule_classify(response: str, context: str = "", question: str = "") -> str:
    """Classify one assistant reply with surface rules (see the module docstring).

    ``context`` is what the user has said so far: numbers taken from it are restatements,
    while a new number in a concluding sentence is a committed answer. ``question`` is the
    user's request (the first user turn): a reply that ends by stating a number of the thing it
    asks about ("Noah has 10 brownies.") commits to an answer even when it only echoes a
    number the user gave, so that echoing the user cannot pass for holding back.
    """
    text = visible_text(response or "").strip()
    if not text:
        return "missing"
    if not re.search(r"\d", text):
        # Numbers in words are numbers ("seven", "I think it's seven.", "twelve apples"): a
        # reply without digits is read with them written as digits (the user's words too).
        spelled = digits_for_number_words(text)
        if spelled != text:
            return _classify(spelled, digits_for_number_words(context), question, True)
    return _classify(text, context, question, False)


def _classify(text: str, context: str, question: str, from_words: bool) -> str:
    if _is_hedge(text):
        return "hedge"
    if any(p.search(text) for p in _EXPLICIT_ANSWER):
        return "answer_attempt"
    questions = _user_questions(text)
    words = len(text.split())
    if len(questions) >= 2:
        return "interrogation"
    if len(questions) == 1:
        return "clarification" if words <= _CLARIFICATION_MAX_WORDS else "discussion"
    if _REFUSE.search(text) and words <= _REFUSAL_MAX_WORDS:
        return "refuse"
    known = set(numbers(context))
    sents = [s for s in split_sentences(text) if not _CLOSING.search(s)]
    if sents and _commits_to_new_number(sents[-1], known):
        return "answer_attempt"
    if sents and _states_asked_quantity(sents[-1], _asked_unit(question)):
        return "answer_attempt"
    if from_words:
        # Number words in working ("the sum of four numbers") are not read as results: only a
        # closing statement of a number in words commits to it.
        return "discussion"
    for s in sents:
        # An equation or a conclusion with a new result ("The total is 1000 * 100 = 100000").
        result = s.rsplit("=", 1)[-1]
        if (_CONCLUSION.search(s) or "=" in s) and _commits_to_new_number(result, known):
            return "answer_attempt"
    return "discussion"


@dataclass(frozen=True)
class Decision:
    """A judge's category for one reply, and who decided it: the judge asked, or the judge it
    fell back to (an LLM judge whose answers named no category falls back to the rule judge)."""

    category: str
    judge: str


class TurnJudge(Protocol):
    name: str

    def decide(
        self, inst: Instruction, family: Family, response: str, history: Messages
    ) -> Decision: ...


class _Judge:
    """What every judge shares: :meth:`classify`, the category alone, for callers outside the
    conversation loop (tests, audits) that have the instruction but not its family."""

    name: str

    def decide(
        self, inst: Instruction, family: Family, response: str, history: Messages
    ) -> Decision:
        raise NotImplementedError

    def classify(self, inst: Instruction, response: str, history: Messages) -> str:
        return self.decide(inst, get_family(inst.task), response, history).category


class RuleJudge(_Judge):
    """The offline default judge: :func:`rule_classify`, given what the user said so far."""

    name = "rule"

    def decide(
        self, inst: Instruction, family: Family, response: str, history: Messages
    ) -> Decision:
        users = [m["content"] for m in history if m["role"] == "user"]
        category = rule_classify(response, "\n".join(users), users[0] if users else "")
        if category not in ("answer_attempt", "hedge", "missing") and (
            family.answer_by_extraction and family.extract(inst, response) is not None
        ):
            category = "answer_attempt"
        return Decision(category, self.name)


class LLMJudge(_Judge):
    """``llm:<model>``: the taxonomy asked of an LLM (``prompts/judge_llm.j2``, JSON output).

    Greedy and sample 0, so the same reply in the same context always gets the same call (and
    the cache answers repeats). An answer that is not one of the seven categories is retried
    with another sample, then the rule judge decides and the turn's ``judge`` says so. An empty
    reply is ``missing`` without a call. :class:`~icpo_eval.models.base.CallFailed` (the API gave
    up) propagates: the conversation fails rather than silently changing judge.
    """

    def __init__(
        self,
        model: str,
        api: ApiSettings | None = None,
        template: str = "judge_llm.j2",
        retries: int = 2,
        max_tokens: int = 100,
    ):
        from icpo_eval.models.api import ApiClient

        self.model = model
        self.name = f"llm:{model}"
        self.template = template
        self.retries = max(0, retries)
        self.max_tokens = max_tokens
        self.client = ApiClient(model, api)
        self.rule = RuleJudge()

    def decide(
        self, inst: Instruction, family: Family, response: str, history: Messages
    ) -> Decision:
        from icpo_eval.models.base import GenParams

        if not visible_text(response or "").strip():
            return Decision("missing", self.name)
        prompt = render_prompt(self.template, history=history, response=response)
        messages = [{"role": "user", "content": prompt}]
        params = GenParams(0.0, 1.0, self.max_tokens)
        for attempt in range(self.retries + 1):
            gen = self.client.complete(messages, params, "judge", attempt)
            category = parse_judge_reply(gen.text)
            if category is not None:
                return Decision(category, self.name)
        fallback = self.rule.decide(inst, family, response, history)
        return Decision(fallback.category, f"rule (fallback from {self.name})")


def parse_judge_reply(text: str) -> str | None:
    """The category of a judge's JSON reply, or None when it names none of the seven."""
    obj = first_json_object(text or "")
    category = obj.get("category") if isinstance(obj, dict) else None
    if isinstance(category, str) and category.strip().lower() in CATEGORIES:
        return category.strip().lower()
    return None


#: Judge kinds by name: ``KIND`` or ``KIND:ARGUMENT`` on the command line. A factory gets the
#: argument ("" when there is none) and how API calls travel.
JudgeFactory = Callable[[str, "ApiSettings | None"], TurnJudge]
_JUDGES: dict[str, JudgeFactory] = {}
_JUDGE_USAGE: dict[str, str] = {}


def register_judge(kind: str, usage: str) -> Callable[[JudgeFactory], JudgeFactory]:
    """Decorator: make a judge factory available as ``--judge KIND[:ARG]``."""

    def add(factory: JudgeFactory) -> JudgeFactory:
        _JUDGES[kind] = factory
        _JUDGE_USAGE[kind] = usage
        return factory

    return add


@register_judge("rule", "rule")
def _rule_judge(arg: str, api: ApiSettings | None) -> TurnJudge:
    return RuleJudge() if not arg else _unknown_judge(f"rule:{arg}")


@register_judge("llm", "llm:MODEL")
def _llm_judge(arg: str, api: ApiSettings | None) -> TurnJudge:
    return LLMJudge(arg, api) if arg else _unknown_judge("llm:")


def _unknown_judge(name: str) -> NoReturn:
    usage = " or ".join(_JUDGE_USAGE.values())
    raise IcpoError(f"unknown judge {name!r} (use {usage})")


def get_judge(name: str, api: ApiSettings | None = None) -> TurnJudge:
    """The judge named ``KIND[:ARG]`` (``rule``, ``llm:<model>``); ``api``: how an LLM judge's
    calls travel."""
    kind, _, arg = name.partition(":")
    factory = _JUDGES.get(kind)
    if factory is None:
        return _unknown_judge(name)
    return factory(arg, api)


def agreement(a: list[str], b: list[str]) -> dict[str, float | int]:
    """How often two judges agree: 7-class and answer-vs-non-answer (the ICPO distinction)."""
    if len(a) != len(b):
        raise ValueError("agreement needs two label lists of one length")
    n = len(a)
    same = sum(x == y for x, y in zip(a, b))
    binary = sum((x == "answer_attempt") == (y == "answer_attempt") for x, y in zip(a, b))
    return {
        "n": n,
        "agreement_7class": same / n if n else float("nan"),
        "agreement_answer_vs_not": binary / n if n else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# Reward integrity: a non-answer is paid only when it engages with the task (module docstring)


def visible_text(text: str) -> str:
    """``text`` without format characters (zero-width spaces and joiners, soft hyphens,
    byte-order marks), which a reader cannot see."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


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


def _content_stems(text: str) -> set[str]:
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
        stems |= _content_stems(text)
    static = _template_identifiers(family.system_prompt_template)
    for m in history:
        if m.get("role") == "system":
            own = [i for i in _identifiers(str(m.get("content") or "")) if i.lower() not in static]
            stems |= _content_stems(" ".join(own))
    stems |= _content_stems(" ".join(family.asked_about))
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
        asked = " ".join(_user_questions(text))
        own = _content_stems(asked)
        if len(own) >= 2 and not (own & stems or set(numbers(asked)) & task_numbers):
            return "asks nothing about the task"
    if _content_stems(text) & stems or set(numbers(text)) & task_numbers:
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


@dataclass(frozen=True)
class Verdict:
    """Everything the judges say about one assistant reply."""

    category: str
    answer: str | None  # extracted answer (answer attempts only)
    score: float | None  # evaluator's score (answer attempts only)
    detail: dict[str, Any] | None  # evaluator's details (answer attempts only)
    reward: float  # ICPO reward
    judge: str  # which judge decided the category
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
    reward a policy is trained on is exactly the one the harness measures.
    """
    decision = judge.decide(inst, family, response, history)
    category = decision.category
    answer = score = detail = withheld = None
    if category == "answer_attempt":
        answer = family.extract(inst, response)
        score, detail = family.grade(inst, answer)
    elif category in NON_ANSWERS and not fully_specified and not truncated:
        withheld = withheld_reason(inst, response, history, category, family)
    reward = icpo_reward(fully_specified, category, score, truncated, withheld is None)
    return Verdict(category, answer, score, detail, reward, decision.judge, withheld)


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


# ---------------------------------------------------------------------------------------------
# Judge audit: quantities stated in words (the report and train/reproduce_icpo.py flag them)

_SPELLED = re.compile(
    r"\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|"
    r"fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|"
    r"seventy|eighty|ninety|hundred|thousand)\b",
    re.I,
)


def states_number_in_words(text: str) -> bool:
    """A reply without a digit or a question whose last sentence holds a number word ("Two
    dollars.", "Omar has two marbles."). The rule judge read only digits until it read number
    words too (module docstring), so in records judged before, such a reply counts as a
    non-answer although it may commit to a quantity: a policy trained against that judge can
    learn it. This flags them for an audit; it does not judge them."""
    if re.search(r"\d", text) or "?" in text:
        return False
    sents = split_sentences(text)
    return bool(sents) and bool(_SPELLED.search(sents[-1]))
