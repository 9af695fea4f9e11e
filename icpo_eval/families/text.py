"""Text helpers shared by the families, the turn judges and the comparison: fenced code blocks,
numbers in a reply, sentences.

Two rules for "the numbers in a text" live here side by side, because their callers ask
different questions and changing either would change what is measured:

* :func:`numbers`, the rule judge's: the digits only, sign, "$" and commas dropped
  ("-$1,200.50" -> "1200.50"); any run of digits and commas is one number ("3,4,5" -> "345").
  The judge compares them with the numbers the user gave, so "-5" and "5" are the same number.
* :func:`number_tokens`: each number as written, sign and "$" kept ("-$1,200.50"); thousands
  commas only in well-formed groups ("3,4,5" is three numbers); the Unicode minus sign and
  dashes read as "-". The math family reads its answers by a rule of its own that extends this
  one (fractions, mixed numbers, LaTeX, space-separated thousands, percentages:
  :func:`~icpo_eval.families.math.answer_tokens`).

Both skip digits inside identifiers ("x2", "H2O") and after a decimal point, and neither takes a
sentence's closing period for a decimal point. :data:`NUMBER_PATTERN` is the judge's number for
use inside the judge's larger patterns.

Numbers written in words are read by :func:`digits_for_number_words`, which writes them as
digits; the rule judge, its audit (:func:`~icpo_eval.judges.states_number_in_words`) and the
math family use it only for a reply that has no digit at all, so that what any of them does
with digits is unchanged. It reads:

* cardinals: "seven", "twenty-five", "one hundred and five", "a hundred" ("a 100"). "one" is a
  number only where it counts something ("one apple", "It's one.", "one" alone), not as a
  pronoun ("the other one", "the second one", "one of them", "one more detail");
* dozens: "a dozen" (12), "two dozen" (24), "three dozens", "half a dozen" / "a half-dozen"
  (6), "one and a half dozen" (18); not "dozens of" (vague);
* fractions, written as a decimal where one ends ("0.5", "0.75", "2.5") and as "n/d"
  otherwise ("2/3"), so that the math family compares them exactly: "one half", "one-third",
  "two thirds", "three quarters", "three fifths" (a numerator below its denominator; "four
  quarters" stays "4 quarters"), mixed numbers "two and a half", "twenty-five and three
  quarters", "two and two thirds", and "half an hour", "an hour and a half", "two hours and a
  half", "half a million", "a half hour", "three quarters of a mile" with a unit of a short
  list;
* "half", "a half", "a third", "a quarter" alone only where they state a quantity: closing a
  sentence alone or after a verb ("Half.", "Each gets half.", "It's a quarter.") or of a unit
  ("half of a pizza").

Fraction words that are no quantity stay words: a share of something unnamed ("half of the
problem is missing", "Half the problem ...", "half of them", "a third of the pie", "two thirds
of the class", "a third of the way"), ordinals ("the third shard", "a third option", "in the
first half", "the other half", "There's a third."), "a quarter past", "cut in half",
"half-baked", and vague amounts ("a couple", "a few", "dozens"). A share is no final number (it
needs the whole it is a share of), and discussion prose is full of them; ordinals name shards
and steps. A run of more than 40 number words is no number, so that reading costs linear time.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "BRANCHING",
    "NUMBER_PATTERN",
    "PLACEHOLDER",
    "UNICODE_MINUSES",
    "Fence",
    "digits_for_number_words",
    "fenced_blocks",
    "number_tokens",
    "numbers",
    "outside_fences",
    "split_sentences",
    "strip_wrapping",
    "unwrap_fence",
    "visible_text",
]

# --------------------------------------------------------------------------------------------
# Fenced code blocks
# --------------------------------------------------------------------------------------------

#: A fence: three backticks and the rest of the opening line (the info string, blanks before it
#: skipped), then the body up to the next three backticks or, for a fence left open, the end of
#: the text.
_FENCE_RE = re.compile(r"```[ \t]*([^\n]*)\n(.*?)(```|\Z)", re.S)
#: The label of a fence: the info string's first run of ASCII letters, digits and ``_+-``.
_LABEL_RE = re.compile(r"[A-Za-z0-9_+-]*")
#: A text that is one fenced block as a whole; backticks inside the body are allowed.
_WHOLE_FENCE_RE = re.compile(r"^```[^\n]*\n(.*?)\n?```\s*$", re.S)


@dataclass(frozen=True)
class Fence:
    """One fenced code block of a text."""

    #: The opening line after the backticks and the blanks that follow them ("python title=x").
    info: str
    #: The text between the opening line and the closing backticks, as written.
    body: str
    #: False for a fence left open at the end of the text (a reply cut off mid-block).
    closed: bool
    #: Where the block, fences included, starts and ends in the text.
    start: int
    end: int

    @property
    def lang(self) -> str:
        """The label, lower-cased ("python", "sql"; "python3" for "python3.11"); "" for none."""
        m = _LABEL_RE.match(self.info)
        return m.group().lower() if m else ""


def fenced_blocks(text: str, *, unclosed: bool) -> list[Fence]:
    """The fenced code blocks of ``text``, in order.

    A block's body ends at the first three backticks after its opening line. With ``unclosed``
    a fence left open counts too (it can only be the last block, and runs to the end of the
    text, ``closed`` False); without, it is not a block and its text is not searched further.
    """
    out = []
    for m in _FENCE_RE.finditer(text):
        closed = bool(m.group(3))
        if closed or unclosed:
            out.append(Fence(m.group(1), m.group(2), closed, m.start(), m.end()))
    return out


def outside_fences(text: str, *, unclosed: bool) -> str:
    """``text`` with every fenced block (see :func:`fenced_blocks`) replaced by one space."""
    parts, pos = [], 0
    for block in fenced_blocks(text, unclosed=unclosed):
        parts += [text[pos : block.start], " "]
        pos = block.end
    parts.append(text[pos:])
    return "".join(parts)


def unwrap_fence(text: str) -> str | None:
    """The body of a text that is one fenced block from its first character to its end (blank
    space after the closing fence allowed, backticks inside the body too), without the newline
    before the closing fence; None for any other text."""
    m = _WHOLE_FENCE_RE.match(text)
    return m.group(1) if m else None


def strip_wrapping(response: str, preamble: re.Pattern[str], label: re.Pattern[str]) -> str:
    """A text answer without what models wrap around it: a code fence around the whole, opening
    lines that ``preamble`` matches ("Here is the translation:"), a ``label`` ("Translation:"),
    and a fence again inside. The families whose answer is free text (translation, data2text)
    pass their own patterns and then strip quotes as they read them."""
    text = response.strip()
    body = unwrap_fence(text)
    if body is not None:
        text = body.strip()
    lines = text.split("\n")
    while len(lines) > 1 and (not lines[0].strip() or preamble.match(lines[0])):
        lines.pop(0)
    text = label.sub("", "\n".join(lines)).strip()
    body = unwrap_fence(text)
    return body.strip() if body is not None else text


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------

_MAGNITUDE = r"\d[\d,]*(?:\.\d+)?"
#: A number as the rule judge's cues read it ("-$1,200.50", "3"), for use inside larger
#: patterns; it has no look-behind and no group.
NUMBER_PATTERN = rf"-?\$?{_MAGNITUDE}"
_NUMBER_RE = re.compile(rf"(?<![\w.])-?\$?({_MAGNITUDE})")

#: One number as a model writes it: optional sign and/or dollar sign, thousands commas (only in
#: well-formed groups, so "3,4,5" is three numbers), optional decimals. The look-behind keeps
#: digits inside identifiers ("x2", "H2O", "step_3") and after a decimal point from being read
#: as numbers of their own; a sentence's closing period is not taken because a decimal point
#: must be followed by a digit.
_TOKEN_RE = re.compile(r"(?<![\w.])(?:-\$?|\$-?)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
#: ``str.translate`` table reading the Unicode minus sign and the dashes models use as one
#: as "-".
UNICODE_MINUSES = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2012": "-"})


def numbers(text: str) -> list[str]:
    """The numbers of ``text`` as the rule judge compares them: digits and decimals only, with
    sign, "$" and commas dropped (see the module docstring)."""
    return [m.group(1).replace(",", "").rstrip(".") for m in _NUMBER_RE.finditer(text)]


def number_tokens(text: str) -> list[str]:
    """The numbers of ``text`` as written, sign and "$" included, Unicode minus signs read as
    "-" (see the module docstring)."""
    return _TOKEN_RE.findall(text.translate(UNICODE_MINUSES))


_UNIT_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS_WORDS = {
    w: 10 * i
    for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)
}
_SCALE_WORDS = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_NUMBER_WORD_RE = re.compile(
    r"\b(?:" + "|".join([*_UNIT_WORDS, *_TENS_WORDS, *_SCALE_WORDS]) + r")\b", re.I
)
#: Words before a lone "one" that make it a pronoun ("the other one", "which one").
_ONE_AFTER = frozenset(
    "the this that each every any which no a an another only last first next single same right "
    "wrong other no one's someone anyone everyone second third fourth fifth sixth seventh eighth "
    "ninth tenth".split()
)
#: Words after a lone "one" that make it a pronoun or an idiom ("one of them", "one more").
_ONE_BEFORE = frozenset(
    "of more another other by at too or and else thing things way ways step question detail "
    "point moment sec second minute".split()
)
#: Verbs after which a lone "one" (or a bare "half") closing a sentence is a stated quantity
#: ("It's one.", "Each gets half.").
_ONE_STATED = frozenset("is it's s was be equals makes gives has have get gets got are".split())
#: A run of more number words than this is no number (no number written in words needs so
#: many, and the value of "nine hundred" x 100,000 would cost unbounded time).
_MAX_RUN_WORDS = 40

#: Fraction words and their denominators: singular after "one"/"a" ("one half", "a third"),
#: plural after a numerator from two up ("two thirds", "three quarters"). Not "second", a unit
#: of time far more often than a half.
_DENOMINATORS = {
    "half": 2,
    "third": 3,
    "quarter": 4,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
}
_PLURAL_DENOMINATORS = {("halves" if w == "half" else w + "s"): d for w, d in _DENOMINATORS.items()}
_DEN = "|".join([*_PLURAL_DENOMINATORS, *_DENOMINATORS])
_DEN_SINGULAR = "|".join(_DENOMINATORS)
#: Units a fraction or "and a half" may measure ("half an hour", "a day and a half", "three
#: quarters of a mile"): a small closed list, so that "a third option" or "half a chance"
#: stay words.
_UNITS = (
    r"(?:hour|day|week|month|year|minute|mile|kilometer|kilometre|meter|metre|cup|pound|"
    r"kilogram|kilo|liter|litre|gallon|dollar|inch|foot|feet|pizza|pie|cake|bag|box|bottle|"
    r"page|lap)(?:e?s)?"
)
#: After a cardinal: "and a half", "and two thirds" (a mixed number).
_AND_FRACTION_RE = re.compile(
    rf"[ \t]+and[ \t]+(?:(?P<one>an?|one)|(?P<num>{'|'.join(list(_UNIT_WORDS)[2:10])}))"
    rf"[ \t-]+(?P<den>{_DEN})\b",
    re.I,
)
#: After a cardinal: a denominator ("one half", "two-thirds", "three quarters").
_FRACTION_AFTER_RE = re.compile(rf"[ \t-]+(?P<den>{_DEN})\b(?!-)", re.I)
#: After a number: "dozen" multiplies it ("two dozen", "one and a half dozen").
_DOZEN_AFTER_RE = re.compile(r"[ \t-]+dozens?\b", re.I)
#: After a cardinal: "hours and a half" ("two hours and a half").
_UNIT_AND_HALF_RE = re.compile(rf"[ \t]+(?P<unit>{_UNITS})[ \t]+and[ \t]+a[ \t]+half\b", re.I)
#: After a fraction without a whole part: "of" and something other than a unit ("half of the
#: problem", "a third of the way", "two thirds of the class"): a share, not a number.
_SHARE_OF_RE = re.compile(rf"[ \t]+of\b(?![ \t]+an?[ \t]+{_UNITS}\b)", re.I)
#: After "a half", "a quarter": a unit ("a half hour", "a quarter mile").
_UNIT_AFTER_RE = re.compile(rf"[ \t]+{_UNITS}\b", re.I)
#: The end of a clause: a bare "half" or "a third" there can be a stated quantity.
_CLAUSE_END_RE = re.compile(r"[ \t]*(?:[.!;:\n]|$)")
#: Quantities led by an article or "half" rather than by a cardinal.
_ARTICLE_RE = re.compile(
    r"\b(?:"
    r"(?P<half_dozen>half[ \t]+an?[ \t]+dozen|an?[ \t]+half[ \t-]+dozen|half[ \t-]+dozen)"
    r"|(?P<dozen>an?[ \t]+dozen)"
    r"|half[ \t]+an?[ \t]+(?P<scale>hundred|thousand|million|billion)"
    rf"|half[ \t]+an?[ \t]+(?P<half_unit>{_UNITS})"
    rf"|an?[ \t]+(?P<unit_and_half>{_UNITS})[ \t]+and[ \t]+a[ \t]+half"
    rf"|(?P<article>an?)[ \t]+(?P<aden>{_DEN_SINGULAR})"
    r"|(?P<bare>half)"
    r")\b(?!-)",
    re.I,
)
_WORD_RE = re.compile(r"[\w']+")
_ONE_FOLLOWS_RE = re.compile(r"\s*([\w']+)?\s*([.?!,;:]|$)?")


def _number_value(words: list[str]) -> int:
    total = current = 0
    for w in words:
        if w in _SCALE_WORDS:
            scale = _SCALE_WORDS[w]
            if scale == 100:
                current = max(current, 1) * 100
            else:
                total += max(current, 1) * scale
                current = 0
        else:
            current += _UNIT_WORDS.get(w, 0) + _TENS_WORDS.get(w, 0)
    return total + current


def _previous_word(text: str, start: int) -> str:
    before = _WORD_RE.findall(text[max(0, start - 40) : start].lower())
    return before[-1] if before else ""


def _starts_sentence(text: str, start: int) -> bool:
    """Whether only blank space, or the end of a sentence, comes before ``start``."""
    head = text[max(0, start - 200) : start].rstrip()
    if not head:
        return True
    return head[-1] in ".?!:\n"


def _lone_one_counts(text: str, start: int, end: int) -> bool:
    after = _ONE_FOLLOWS_RE.match(text, end)
    prev = _previous_word(text, start)
    nxt = (after.group(1) or "").lower() if after else ""
    closes = after is not None and after.group(1) is None and after.group(2) is not None
    if prev in _ONE_AFTER:
        return False
    if nxt:
        return nxt not in _ONE_BEFORE
    # "one" closing a sentence: alone ("One."), or after a verb ("It's one.").
    return closes and (_starts_sentence(text, start) or prev in _ONE_STATED)


def _as_digits(value: Fraction) -> str:
    """A value as digits: an integer, a decimal where it ends ("2.5", "0.75"), else "n/d"."""
    if value.denominator == 1:
        return str(value.numerator)
    d, places = value.denominator, 0
    for p in (2, 5):
        k = 0
        while d % p == 0:
            d, k = d // p, k + 1
        places = max(places, k)
    if d != 1:
        return f"{value.numerator}/{value.denominator}"
    digits = str(value.numerator * 10**places // value.denominator).rjust(places + 1, "0")
    return f"{digits[:-places]}.{digits[-places:]}"


def _fraction(word: str) -> tuple[int, bool]:
    """A fraction word's denominator and whether it is plural."""
    w = word.lower()
    if w in _PLURAL_DENOMINATORS:
        return _PLURAL_DENOMINATORS[w], True
    return _DENOMINATORS[w], False


def _cardinal_runs(text: str) -> list[list[re.Match[str]]]:
    runs: list[list[re.Match[str]]] = []
    for m in _NUMBER_WORD_RE.finditer(text):
        w = m.group().lower()
        if runs:
            last = runs[-1][-1]
            gap = text[last.end() : m.start()]
            prev = last.group().lower()
            joined = re.fullmatch(r"\s*-\s*|\s+(?:and\s+)?", gap) is not None
            if " and " in f" {gap} " and prev not in _SCALE_WORDS:
                joined = False  # "two and three" are two numbers; "a hundred and five" is one
            # "five twenty" or "two three" are two numbers, "twenty five" one.
            small = prev in _UNIT_WORDS or prev in _TENS_WORDS
            if (
                small
                and w not in _SCALE_WORDS
                and not (prev in _TENS_WORDS and 0 < _UNIT_WORDS.get(w, 0) < 10)
            ):
                joined = False
            if joined:
                runs[-1].append(m)
                continue
        runs.append([m])
    return runs


def _read_run(text: str, run: list[re.Match[str]]) -> tuple[int, str | None]:
    """Where a run of cardinal words ends, what follows it included ("two and a half dozen"),
    and its digits; None for a run that is no number (a pronoun "one", a share "two thirds of
    the class", a run too long)."""
    end = run[-1].end()
    words = [m.group().lower() for m in run]
    if len(words) > _MAX_RUN_WORDS:
        return end, None
    whole = _number_value(words)
    value, read = Fraction(whole), False
    m = _AND_FRACTION_RE.match(text, end)
    if m:
        num = 1 if m.group("one") else _UNIT_WORDS[m.group("num").lower()]
        den, plural = _fraction(m.group("den"))
        if num < den and plural == (num > 1):
            value, end, read = value + Fraction(num, den), m.end(), True
    if not read:
        m = _FRACTION_AFTER_RE.match(text, end)
        if m:
            den, plural = _fraction(m.group("den"))
            if 0 < whole < den and plural == (whole > 1):
                if _SHARE_OF_RE.match(text, m.end()):
                    return m.end(), None  # "two thirds of the class": a share
                value, end, read = Fraction(whole, den), m.end(), True
    m = _DOZEN_AFTER_RE.match(text, end)
    if m:
        value, end, read = value * 12, m.end(), True
    if not read:
        m = _UNIT_AND_HALF_RE.match(text, end)
        if m:
            return m.end(), f"{_as_digits(value + Fraction(1, 2))} {m.group('unit')}"
    if not read and words == ["one"] and not _lone_one_counts(text, run[0].start(), end):
        return end, None
    return end, _as_digits(value)


def _read_article(text: str, m: re.Match[str]) -> str | None:
    """The digits of a quantity :data:`_ARTICLE_RE` found ("a dozen" -> "12", "half an hour"
    -> "0.5 hour"), or None where the words are no quantity ("half the problem", "a third
    option", "in the first half", "a quarter past")."""
    if m.group("half_dozen"):
        return "6"
    if m.group("dozen"):
        return "12"
    if m.group("scale"):
        return _as_digits(Fraction(_SCALE_WORDS[m.group("scale").lower()], 2))
    if m.group("half_unit"):
        return f"0.5 {m.group('half_unit')}"
    if m.group("unit_and_half"):
        return f"1.5 {m.group('unit_and_half')}"
    start, end = m.start(), m.end()
    prev = _previous_word(text, start)
    if prev == "and":
        return None  # "the first and a half": no whole number before it
    of_unit = re.match(rf"[ \t]+of[ \t]+an?[ \t]+{_UNITS}\b", text[end : end + 80], re.I)
    # Closing a sentence alone ("Half.", "A third.") or after a verb ("Each gets half.", "It's
    # a quarter."); not "There's a third." (a third what?) nor "the other half".
    closes = _CLAUSE_END_RE.match(text, end) is not None
    stated = closes and (_starts_sentence(text, start) or prev in _ONE_STATED)
    if m.group("article"):
        den, _ = _fraction(m.group("aden"))
        unit = den in (2, 4) and _UNIT_AFTER_RE.match(text, end)  # "a half hour"
        return _as_digits(Fraction(1, den)) if of_unit or unit or stated else None
    # A bare "half": of a unit ("half of a pizza"), or stated.
    return "0.5" if of_unit or stated else None


def digits_for_number_words(text: str) -> str:
    """``text`` with every number written in words as digits: "seven" -> "7", "twenty-five
    apples" -> "25 apples", "one hundred and five" -> "105", "a hundred" -> "a 100"; "a dozen"
    -> "12", "two dozen" -> "24", "half a dozen" -> "6"; "one half" -> "0.5", "three quarters"
    -> "0.75", "two thirds" -> "2/3", "two and a half" -> "2.5", "half an hour" -> "0.5 hour".
    A lone "one" is read only where it counts something, and fraction words only where they
    are quantities (see the module docstring). Digits already in the text are left alone;
    callers use this on text without any (see the module docstring)."""
    spans: list[tuple[int, int, str | None]] = []
    for run in _cardinal_runs(text):
        end, digits = _read_run(text, run)
        spans.append((run[0].start(), end, digits))
    if re.search(
        r"(?i)dozen|half|third|quarter|fourth|fifth|sixth|seventh|eighth|ninth|tenth", text
    ):
        for m in _ARTICLE_RE.finditer(text):
            spans.append((m.start(), m.end(), _read_article(text, m)))
    spans.sort(key=lambda s: s[0])
    out, pos = [], 0
    for start, end, digits in spans:
        if start < pos:
            continue  # inside a quantity read already ("a half" of "two and a half")
        if digits is not None:
            out += [text[pos:start], digits]
        else:
            out.append(text[pos:end])
        pos = end
    out.append(text[pos:])
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Templates and alternatives (what makes a code, SQL or call answer not a final one)
# --------------------------------------------------------------------------------------------

#: A placeholder a template leaves for the user to fill: ``<FIRST_NAME>``, ``<amount>``,
#: ``{...}``, ``{year}``, ``YYYY-MM-DD``, ``???``, ``TODO``, ``FIXME``, ``your_table``. Not
#: ``{}`` (an empty dict) nor ``a < b > c`` (the word must touch both brackets).
PLACEHOLDER = re.compile(
    r"<[A-Za-z_][\w .-]{0,40}>|\{(?:\.\.\.|…|[A-Za-z_]\w{0,40})\}|\bY{4}-MM-DD\b|\?{3}|"
    r"\b(?:TODO|FIXME|TBD)\b|\byour_\w+",
)
#: Words that offer an answer per reading of the task: with two different answers of the
#: family's shape in one reply, they make it a hedge ("If you meant X, use the first query").
BRANCHING = re.compile(
    r"\b(?:(?:if|in case) you (?:meant|mean|want|wanted|need|prefer|'d (?:rather|prefer|like))|"
    r"(?:reading|interpretation|option|version|variant|case|scenario)\s*[(#]?(?:[A-D1-4]|one|two)\b|"
    r"(?:two|both|several|multiple|different)\s+(?:[\w-]+\s+){0,2}?(?:readings|interpretations|"
    r"ways|options|versions|variants|cases|scenarios|possibilities)|"
    r"depending on|depends on (?:whether|what|which|how)|alternatively|whichever|"
    r"(?:on the other hand|or,? if|but if|whereas if|if instead|if,? instead))",
    re.I,
)


# --------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------

_SENTENCE_BREAK_RE = re.compile(r"(?<=[.?!])\s+|\n+")
#: Words whose full stop does not end a sentence: titles before a name ("Ms. Lee"), and the
#: abbreviations of running text ("e.g.", "approx."); not "etc.", which mostly ends one.
_ABBREVIATIONS = re.compile(
    r"(?:^|[\s(\[])(?:mr|mrs|ms|mx|dr|prof|st|sr|jr|mt|vs|approx|no|fig|e\.g|i\.e|cf)\.$",
    re.I,
)


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``: split after ``.?!`` followed by blank space and at line
    breaks, each stripped of blank space and of list and emphasis marks (``*-#>``); empty
    pieces are dropped. A full stop after a title or a common abbreviation ("Ms. Lee",
    "e.g. 5") does not end a sentence, and a piece without a letter or digit (a trailing
    emoji, a rule ``---``) is not a sentence of its own: it joins the sentence before it."""
    pieces = _SENTENCE_BREAK_RE.split(text)
    out: list[str] = []
    glue = False  # the previous piece ended in an abbreviation: this one continues it
    for raw in pieces:
        piece = raw.strip(" \t*-#>")
        if not piece:
            continue
        if out and (glue or not any(ch.isalnum() for ch in piece)):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
        glue = bool(_ABBREVIATIONS.search(raw.rstrip())) and raw.endswith(".")
    return out


def visible_text(text: str) -> str:
    """``text`` without format characters (zero-width spaces and joiners, soft hyphens,
    byte-order marks), which a reader cannot see."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
