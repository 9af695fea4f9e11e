"""Turn judges: which of the seven Lost-in-Conversation categories a reply falls into.

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

The ICPO reward of a judged reply, and the rule that pays a non-answer only when it engages with
the task, are in :mod:`icpo_eval.reward`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, Protocol

from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, get_family
from icpo_eval.families.text import (
    NUMBER_PATTERN,
    digits_for_number_words,
    numbers,
    outside_fences,
    split_sentences,
    visible_text,
)
from icpo_eval.models.base import Messages
from icpo_eval.prompting import first_json_object, render_prompt
from icpo_eval.records import CATEGORIES, Instruction

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


def user_questions(text: str) -> list[str]:
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
    questions = user_questions(text)
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
        context, question = "\n".join(users), users[0] if users else ""
        category = rule_classify(response, context, question)
        if category == "hedge" and family.answer_by_extraction:
            # The hedge cues read conditions with numbers ("if size <= 0: return []"); in a
            # family whose answer is a program they count only in the prose around it.
            prose = outside_fences(response, unclosed=True)
            category = rule_classify(prose, context, question) if prose.strip() else "discussion"
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
