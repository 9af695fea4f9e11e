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
empty → hedge cues → an explicit final answer → a concluding sentence ("So ...") with a new
number → questions/requests addressed to the user → refusal phrases → partial results → an
implicit numeric conclusion → discussion. For the families whose answer has a shape of its own
(code, SQL, function calls: :func:`shaped_classify`), the family's extractor decides whether
there is an answer and :meth:`~icpo_eval.families.Family.answer_problem` whether it is one
complete answer; then the prose around the code is read by the same rules, except that prose
cannot answer or hedge there. Its accuracy is measured in ``tests/test_judges.py`` on
hand-labelled replies (development and held-out sets, of the embedded model and in the style of
strong chat models; ``tests/data/JUDGE_LABELS.md`` is the labelling standard). Invisible
characters (zero-width spaces, joiners) do not count: a reply of only those is ``missing``. A
reply without any digit is read with its numbers in words as digits
(:func:`~icpo_eval.families.text.digits_for_number_words`: cardinals, dozens, halves and
other simple fractions), so that "seven", "I think it's seven.", "twelve apples", "a dozen
pencils", "two and a half hours" and "Each gets one half." commit to a number as digits would,
while words that are no quantity ("half of the problem is missing", "the third shard", "a
couple of details", "a quarter past") stay words; number words in working ("the sum of four
numbers") are not read as results, only a closing statement of one. Sentences are split
with titles and abbreviations kept whole ("Ms. Lee"), and a trailing emoji is no sentence.

Conventions for borderline replies (the labelled sets follow them; Lost in Conversation's
definitions: an answer attempt is complete, "not templated or hypothetical", and the
conversation could end on it):

- one committed final answer makes an answer attempt, whatever else the reply holds: working
  with rhetorical questions, a closing offer or check ("Anything else?", "Does that match your
  answer key?"), an uncertain tone ("I can't be certain, but it's probably 40"), one stated
  assumption leading to one outcome ("Assuming ..., roughly 56"), a concluding "So ... 50
  books." followed by a question;
- a reply that ends by stating a number of the very thing the user asks about ("Noah has 10
  brownies." after "How many brownies ...?") is an answer attempt even when the number is one
  the user gave: echoing the user must not pass for holding back;
- a result the reply calls partial ("so far", "running total", "I'll hold off ...") is not an
  answer: with no question, such a reply is a discussion;
- code, a query or calls with placeholders (``'<FIRST_NAME>'``, ``'YYYY-MM-DD'``, ``:tier``, a
  ``...`` body, ``# TODO``), a fragment (a lone ``WHERE`` clause, only private helpers) are no
  answer; two different ones offered per reading ("Option A ... / Option B ...") make a hedge;
- two or more outcomes under different assumptions make a hedge (also as a table, several boxed
  answers, "Reading A ... / Reading B ..." or "two ways to read this" with an answer in bold
  each), even when one is preferred or the reply ends by asking which was meant;
- questions and direct requests addressed to the user count, one or several, wherever they
  stand; a compound question with one question mark is one; a self-answered question is
  working; a closing offer ("Let me know if you need anything else", "Want me to add tests?")
  is none, but a question that asks what to do ("Which currency would you like me to use?")
  is; a vague one alone ("Anything else I should know?") makes a discussion; one question in a
  reply of more than 100 words is a discussion; question marks in table cells and inline code
  are not questions;
- a decline is a refusal by its meaning ("I'd prefer not to guess", "there's no way to know",
  "I'll hold off"), however long it explains itself, unless it asks something (then it is a
  clarification or interrogation) or works the problem part of the way (a discussion);
  restating facts, partial results and explaining what is needed, without asking, is a
  discussion.

The rule judge's :data:`RULE_JUDGE_VERSION` is recorded on every turn it decides; an LLM
judge's version is its prompt's hash.

Truncation (the reply hit the token limit) is not a category: it is recorded on the turn, and
the ICPO reward never counts a truncated reply as a non-answer, so that a policy cannot earn the
"asked instead of guessing" reward by rambling until it is cut off.

The ICPO reward of a judged reply, and the rule that pays a non-answer only when it engages with
the task, are in :mod:`icpo_eval.reward`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, Protocol

from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, get_family
from icpo_eval.families.text import (
    BRANCHING,
    NUMBER_PATTERN,
    digits_for_number_words,
    numbers,
    outside_fences,
    split_sentences,
    visible_text,
)
from icpo_eval.models.base import Messages
from icpo_eval.paths import PROMPTS_DIR
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
    r"\b(?:i(?:'m| am)? (?:sorry|afraid)|i(?:'m| am) (?:not able|unable)"
    r"|i (?:can(?:no|')t|can ?not)"
    r"(?! (?:be (?:certain|sure|100%)|(?:say|know|tell) for (?:sure|certain)|guarantee))"
    r"|i won'?t (?:be able|guess|answer|put|give|write|run|make|hand|commit|pick|invent|assume)"
    r"|i(?:'d| would) (?:rather|prefer) not|i(?:'ll| will) (?:hold off|refrain)"
    r"|i(?:'m| am) not (?:going|willing) to (?:guess|answer|invent|make|pick|write|run)"
    r"|i (?:don't|do not) want to (?:guess|invent|make up|pick)"
    r"|(?:there's|there is) no way (?:to|of|for me to) (?:know|tell|say|determin|work|be sure)"
    r"|rather than (?:guess|act on guesses|invent)"
    r"|unable to (?:answer|solve|help|determine|compute|calculate)"
    r"|(?:not|isn't|is not) possible to (?:answer|solve|determine|say|calculate|compute)"
    r"|impossible to (?:answer|solve|determine|say|calculate|compute)"
    r"|(?:not|isn't|is not|there's not|there is not) enough (?:info|information|detail|data)"
    r"|can(?:no|')t be (?:answered|solved|determined|calculated|computed)"
    r"|(?:i )?(?:must|have to|need to|will) (?:decline|pass)|not (?:something )?i can help)",
    re.I,
)
#: Words that call a result partial: a number stated with them is not the final answer.
_PARTIAL = re.compile(
    r"\b(?:so far|for now|running (?:count|total|tally)|sub-?totals?|partial|intermediate|"
    r"before the rest|at this point|starting point|(?:not|isn't|is not) (?:yet )?(?:the )?final|"
    r"rather than the final|until i know|until you (?:tell|say|confirm|let)|hold off|"
    r"so far,)",
    re.I,
)
# A request for information phrased without a question mark.
_REQUEST = re.compile(
    r"^(?:please|kindly|could you|can you|would you|let me know|tell me|i(?:'d| would) need "
    r"(?:you )?to know|i need to know|provide|share|specify|clarify|what is|what are|how many|"
    r"how much)\b",
    re.I,
)
# Closing offers and checks that end many answers: not questions about the task.
_CLOSING = re.compile(
    r"\b(?:anything else(?=\s*[?!.]|\s*$| i can| you(?:'d| would)? (?:like|need|want))|"
    r"(?:is there|there's) anything else(?! (?:i should|i need|to|you can tell|that))|"
    r"(?:any )?(?:other|more|further) questions|"
    r"need (?:any )?(?:more |further |other )?help|help (?:you )?with (?:anything|something) else|"
    r"hope (?:this|that) helps|let me know if (?:you|there(?:'s| is) anything|this|that|anything)|"
    r"feel free|happy to help|"
    r"(?:would you like|do you want|want) me to (?:explain|walk|add|show|write|break|go|provide|"
    r"elaborate|expand|include|also|make|turn|format|test|run|wrap|extend|optimi[sz]e)|"
    r"shall i (?:explain|also|add|walk|show|go|write)|"
    r"(?:does|did) (?:that|this|it) (?:make sense|help|match|look right|sound right|work for you|"
    r"answer your question|line up|agree)|"
    r"(?:is|was) (?:that|this) (?:helpful|clear|what you (?:wanted|needed|were looking for)))",
    re.I,
)
#: A question that asks nothing in particular: with no other, the reply is a discussion.
_VAGUE = re.compile(
    r"\b(?:(?:is there )?anything else (?:i should|i need to|to|you can tell|you(?:'d| would) like "
    r"to (?:add|share|tell))|any (?:other|more|further) (?:details|information|info|context)"
    r"(?! about)|what else (?:should|do) i)\b",
    re.I,
)
_WH_START = re.compile(r"^(?:which|what|how|when|where|who|whose|whom)\b(?! else)", re.I)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_TABLE_LINE = re.compile(r"^\s*\|.*\|\s*$", re.M)
# The start of a sentence that answers the question just before it (a rhetorical step).
_SELF_ANSWER = re.compile(r"^(?:it|that|this) (?:means|is|refers)\b|^(?:well|so),", re.I)
_QUOTED = re.compile(r"\"[^\"\n]*\"|“[^”\n]*”")
_CLARIFICATION_MAX_WORDS = 100


def user_questions(text: str) -> list[str]:
    """Questions and requests addressed to the user (rhetorical steps, closings, and question
    marks in table cells or inline code excluded)."""
    text = _TABLE_LINE.sub(" ", _INLINE_CODE.sub("``", text))
    sents = split_sentences(_QUOTED.sub('""', text))
    asked = []
    for i, s in enumerate(sents):
        if _CLOSING.search(s) and not _WH_START.match(s):
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


#: A labelled branch: "Reading A", "Interpretation 2", "Option B", "Case 1".
_BRANCH_LABEL = re.compile(
    r"\b(?:reading|interpretation|option|case|scenario|version)\s*[(#]?([A-D1-4]|one|two)\b", re.I
)
_BOLD_NUMBER = re.compile(rf"\*\*[^*\n]{{0,60}}?{_NUM}[^*\n]{{0,60}}?\*\*")


def _is_hedge(text: str) -> bool:
    """Several answers, one per assumption."""
    boxed = set(re.findall(r"\\boxed\{([^}]*)\}", text))
    if len(boxed) >= 2 or _EITHER.search(text):
        return True
    # Readings side by side ("two reasonable ways to read this", "Reading A / Reading B"),
    # each with its own answer in bold.
    bold = {n for b in _BOLD_NUMBER.findall(text) for n in numbers(b)}
    if len(bold) >= 2 and BRANCHING.search(text):
        return True
    labels = list(_BRANCH_LABEL.finditer(text))
    if len({m.group(1).lower() for m in labels}) >= 2:
        if len(set(numbers(text[labels[0].start() :]))) >= 2:
            return True
    conditionals = len(_CONDITIONAL.findall(text)) + len(_WITH_OUTCOME.findall(text))
    if conditionals >= 2:
        # Conditional steps that end in one stated conclusion are working, not a hedge.
        last = split_sentences(text)[-1]
        concluded = re.match(r"(?:so|therefore|thus|hence)\b", last, re.I)
        return not (concluded and not re.search(r"\b(?:if|either|or)\b", last, re.I))
    cue = _HEDGE_CUES.search(text)
    return bool(cue and (conditionals >= 1 or len(_TABLE_ROW.findall(text)) >= 2))


_CONCLUDING = re.compile(
    r"^(?:so|therefore|thus|hence|in total|altogether|overall|in the end|that means|this means)\b",
    re.I,
)


def _concludes(sentence: str, known: set[str]) -> bool:
    """A sentence that opens as a conclusion ("So ...", "Therefore ...") and states a number
    the user never gave: a committed answer, whatever questions follow it."""
    return bool(_CONCLUDING.match(sentence)) and _commits_to_new_number(sentence, known)


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


def _classify(
    text: str,
    context: str,
    question: str,
    from_words: bool,
    words: int | None = None,
    answers: bool = True,
) -> str:
    """The rules of :func:`rule_classify` in order. ``words``: the reply's length when
    ``text`` is part of it (its prose); ``answers`` False: the text cannot commit to an answer
    nor hedge (prose around code, see :func:`shaped_classify`)."""
    if answers and _is_hedge(text):
        return "hedge"
    if answers and any(p.search(text) for p in _EXPLICIT_ANSWER):
        return "answer_attempt"
    partial = _PARTIAL.search(text) is not None
    known = set(numbers(context))
    sents = [s for s in split_sentences(text) if not _CLOSING.search(s)]
    if answers and not partial and not from_words and any(_concludes(s, known) for s in sents):
        # "So Noah ends up with 50 books. Has anything else changed?": an answer, then a check.
        return "answer_attempt"
    questions = user_questions(text)
    words = len(text.split()) if words is None else words
    if questions and all(_VAGUE.search(q) for q in questions):
        return "discussion"  # "Anything else I should know?" asks nothing in particular
    if len(questions) >= 2:
        return "interrogation"
    if len(questions) == 1:
        return "clarification" if words <= _CLARIFICATION_MAX_WORDS else "discussion"
    # A refusal is one by what it says, however long it explains itself; one that works the
    # problem part of the way ("15 students so far; I'll hold off ...") is a discussion.
    if _REFUSE.search(text) and not (partial and "=" in text):
        return "refuse"
    if not answers or partial:
        return "discussion"
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


#: The rule judge's version, recorded on every turn it decides (``Turn.judge_version``). Bump it
#: with any change to the rules that can change a category: runs judged by different versions are
#: then never merged into one leaderboard row (``icpo-eval rejudge`` brings an old run up to date).
#: ``tests/test_judges.py`` holds a fingerprint of the rule judge's categories on the labelled
#: sets and fails when they change under an unchanged version. Version 3 reads dozens, halves
#: and simple fractions in words (issue 15).
RULE_JUDGE_VERSION = "3"


@dataclass(frozen=True)
class Decision:
    """A judge's category for one reply, and who decided it: the judge asked, or the judge it
    fell back to (an LLM judge whose answers named no category falls back to the rule judge),
    with that judge's version."""

    category: str
    judge: str
    version: str = ""


class TurnJudge(Protocol):
    name: str
    version: str

    def decide(
        self, inst: Instruction, family: Family, response: str, history: Messages
    ) -> Decision: ...


class _Judge:
    """What every judge shares: :meth:`classify`, the category alone, for callers outside the
    conversation loop (tests, audits) that have the instruction but not its family."""

    name: str
    version: str = ""

    def decide(
        self, inst: Instruction, family: Family, response: str, history: Messages
    ) -> Decision:
        raise NotImplementedError

    def classify(self, inst: Instruction, response: str, history: Messages) -> str:
        return self.decide(inst, get_family(inst.task), response, history).category


class RuleJudge(_Judge):
    """The offline default judge: :func:`rule_classify`, given what the user said so far."""

    name = "rule"
    version = RULE_JUDGE_VERSION

    def decide(
        self, inst: Instruction, family: Family, response: str, history: Messages
    ) -> Decision:
        users = [m["content"] for m in history if m["role"] == "user"]
        context, question = "\n".join(users), users[0] if users else ""
        if family.answer_by_extraction:
            category = shaped_classify(inst, family, response, context, question)
        else:
            category = rule_classify(response, context, question)
        return Decision(category, self.name, self.version)


def shaped_classify(
    inst: Instruction, family: Family, response: str, context: str = "", question: str = ""
) -> str:
    """The rule judge for a family whose answer has a shape of its own (a program, a query,
    function calls: :attr:`~icpo_eval.families.Family.answer_by_extraction`).

    An answer attempt is what the family's extractor takes from the reply, when it is one
    complete answer (:meth:`~icpo_eval.families.Family.answer_problem`): several different
    answers offered per reading make a hedge; a template or a fragment is no answer, and then
    the prose around the code decides, as for any reply, except that prose cannot commit to an
    answer of this shape (a number in it is not one) nor hedge without two answers.
    """
    text = visible_text(response or "").strip()
    if not text:
        return "missing"
    answer = family.extract(inst, response)
    if answer is not None:
        problem = family.answer_problem(inst, response, answer)
        if problem is None:
            return "answer_attempt"
        if problem == "alternatives":
            return "hedge"
    prose = outside_fences(text, unclosed=True).strip()
    if not prose:
        return "discussion"
    return _classify(prose, context, question, False, words=len(text.split()), answers=False)


class LLMJudge(_Judge):
    """``llm:<model>``: Lost-in-Conversation's categorisation asked of an LLM
    (``prompts/judge_llm.j2``, JSON output).

    The prompt follows the benchmark's definitions point by point and gives the judge what the
    benchmark gives it: the whole task (the fully specified instruction and every shard), the
    conversation so far, the reply, and the family's shape of an answer
    (:attr:`~icpo_eval.families.Family.answer_shape`). Its version is the template's name and
    the hash of its text, so a changed prompt is a new judge version.

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
        self.version = prompt_version(template)
        self.retries = max(0, retries)
        self.max_tokens = max_tokens
        self.client = ApiClient(model, api)
        self.rule = RuleJudge()

    def prompt(self, inst: Instruction, family: Family, response: str, history: Messages) -> str:
        """The judge's prompt for one reply (see the class doc)."""
        return render_prompt(
            self.template,
            family=family.name,
            answer_shape=family.answer_shape,
            specification=family.full_prompt(inst),
            shards=inst.shards,
            history=history,
            response=response,
        )

    def decide(
        self, inst: Instruction, family: Family, response: str, history: Messages
    ) -> Decision:
        from icpo_eval.models.base import GenParams

        if not visible_text(response or "").strip():
            return Decision("missing", self.name, self.version)
        messages = [{"role": "user", "content": self.prompt(inst, family, response, history)}]
        params = GenParams(0.0, 1.0, self.max_tokens)
        for attempt in range(self.retries + 1):
            gen = self.client.complete(messages, params, "judge", attempt)
            category = parse_judge_reply(gen.text)
            if category is not None:
                return Decision(category, self.name, self.version)
        fallback = self.rule.decide(inst, family, response, history)
        return Decision(fallback.category, f"rule (fallback from {self.name})", fallback.version)


def prompt_version(template: str) -> str:
    """``TEMPLATE@HASH``: the prompt template's name and the first 12 hex digits of the
    SHA-256 of its text, the version of an LLM judge that uses it."""
    text = (PROMPTS_DIR / template).read_bytes()
    return f"{template}@{hashlib.sha256(text).hexdigest()[:12]}"


def parse_judge_reply(text: str) -> str | None:
    """The category of a judge's JSON reply (``category``, or Lost-in-Conversation's own key
    ``response_type``), or None when it names none of the seven."""
    obj = first_json_object(text or "")
    category = None
    if isinstance(obj, dict):
        category = obj.get("category", obj.get("response_type"))
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


def states_number_in_words(text: str) -> bool:
    """A reply without a digit or a question whose last sentence states a number in words as
    :func:`~icpo_eval.families.text.digits_for_number_words` reads them ("Two dollars.", "Omar
    has two marbles.", "a dozen eggs", "two and a half hours", "Each gets one half."; not "the
    third shard", "half of the problem", "a couple", "which one"). The rule judge read only
    digits until it read number words too (module docstring), so in records judged before, such
    a reply counts as a non-answer although it may commit to a quantity: a policy trained
    against that judge can learn it. This flags them for an audit; it does not judge them. Its
    cost is linear in the reply's length (no pattern backtracks more than a bounded stretch)."""
    if "?" in text or _DIGIT.search(text):
        return False
    sents = split_sentences(text)
    if not sents:
        return False
    last = sents[-1]
    return digits_for_number_words(last) != last


_DIGIT = re.compile(r"\d")
