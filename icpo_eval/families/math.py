"""The ``math`` family: multi-step arithmetic word problems, revealed one quantity at a time.

Shard 1 is the question, without any number; every later shard is one sentence carrying one
quantity, and one optional shard may be a distractor. The problems are made by
:mod:`icpo_eval.families.math_make` (which says why they are generated and how); this module
extracts and grades answers, for those and for GSM8K and Lost-in-Conversation math records.

Extraction and grading follow Lost-in-Conversation's math task (final number, exact match) with
its normalisation bug fixed: LiC stripped trailing zeros with ``rstrip`` and read "$100.00" as 1.

How a number is read (:func:`answer_tokens`, :func:`normalize_number`):

* integers and decimals as written, sign and "$" allowed ("-$1,200.50"); thousands separated by
  commas, or by one space, thin space (U+2009, U+202F) or no-break space, only in well-formed
  groups: a group of exactly three digits after a group of one to three digits ("1 234 567" is
  one number, "3 4" and "2024 100" are two; "100 200" is one number, 100200, which a list of
  numbers separated by single spaces also reads as);
* fractions of integers ``3/4``, ``-3/4``, mixed numbers ``1 1/2`` (a whole number, one space,
  a proper fraction; "3 5/4" is two numbers), and LaTeX's ``\\frac{3}{4}``, ``\\dfrac``,
  ``\\tfrac``, ``\\frac34``; a fraction whose denominator is 0 is no number, and neither is a
  run like "3/4/2024" (a date) nor a number with an exponent ("10^9", "10^{9}", "2**10",
  "1e9"): powers are never evaluated, so that no reply can ask for a 10**10**9;
* percentages ``45%`` (``45\\%`` in LaTeX);
* the answer is the last number of the reply, except that the content of the last
  ``\\boxed{...}`` wins when it holds a number, then the line of the last answer marker
  (:func:`extract_number`);
* a reply without any digit: its numbers in words, dozens and simple fractions included
  ("two dozen", "three and a half", "two thirds"), read as digits
  (:func:`~icpo_eval.families.text.digits_for_number_words`).

Grading compares values exactly with :class:`fractions.Fraction`, never floats: 0.75 equals
3/4 and 1/3 does not equal 0.333. A percentage has two readings: "45%" matches a reference of
45 (GSM8K and LiC write the answer of a "what percent" question as a plain number) and one of
0.45 (the same quantity); two percentages are compared as written ("45%" matches "45%" only).
A number written with more than :data:`MAX_DIGITS` digits is no number, so that a hostile reply
costs bounded time.
"""

from __future__ import annotations

import random
import re
from fractions import Fraction
from math import gcd

from icpo_eval.families import Family, register, shards_without
from icpo_eval.families.text import UNICODE_MINUSES, digits_for_number_words
from icpo_eval.records import Instruction

__all__ = [
    "MAX_DIGITS",
    "MathFamily",
    "answer_tokens",
    "answer_value",
    "extract_number",
    "normalize_number",
    "reference_answer",
    "same_number",
]

# --------------------------------------------------------------------------------------------
# Numbers: reading, normalisation, values
# --------------------------------------------------------------------------------------------

#: "Answer: 8", "**Answer:** 8", "Final answer: 8" — the format the system prompt asks for — and
#: what small models trained on GSM8K write on their own: "#### 8", "The answer is: 8".
_ANSWER_MARKER_RE = re.compile(r"answer\W{0,3}:|answer\s+is\b|####", re.IGNORECASE)
#: How much of a reply without digits is read for numbers written in words (the end, where
#: the answer is).
_SPELLED_CHARS = 20_000
#: Most digits of one number; a longer one is no number (its value would cost unbounded time).
MAX_DIGITS = 10_000
#: How far after the last ``\boxed{`` its closing brace is looked for.
_BOXED_CHARS = 2_000

#: One character that may separate thousands groups (and the whole part of a mixed number).
_SEP = "[ \u00a0\u2009\u202f]"
_GROUPED = rf"\d{{1,3}}(?:,\d{{3}}(?!\d))+|\d{{1,3}}(?:{_SEP}\d{{3}}(?!\d))+"
_BODY = (
    rf"(?:(?P<whole>\d+){_SEP}(?P<mnum>\d+)/(?P<mden>\d+)"
    r"|(?P<num>\d+)/(?P<den>\d+)"
    rf"|(?P<int>{_GROUPED}|\d+)(?:\.(?P<dec>\d+))?)"
)
#: Not part of a number: more digits, "/digit" (a date), an exponent.
_END = r"(?!\d|/\d|\^|[eE][+-]?\d)"
#: One number as a model writes it (see the module docstring). The look-behind keeps digits
#: inside identifiers ("x2", "H2O"), after a decimal point and after "/" (the rest of a date)
#: from being numbers of their own; a sentence's closing period is not taken because a decimal
#: point must be followed by a digit.
_TOKEN_RE = re.compile(rf"(?<![\w./^])(?P<sign>-\$?|\$-?)?{_BODY}(?P<pct>{_SEP}?%)?{_END}")
#: One whole text that is one number (``normalize_number``): the same, a leading "+" allowed.
_WHOLE_RE = re.compile(rf"(?P<sign>-\$?|\$-?|\+)?{_BODY}(?P<pct>{_SEP}?%)?")
#: A canonical number: what :func:`normalize_number` returns.
_CANONICAL_RE = re.compile(r"(-?)(\d+)(?:\.(\d+)|/(\d+))?(%?)")

_FRAC_ARG = r"\{ ?([+-]?) ?(\d+) ?\}"
#: LaTeX fractions of integers: ``\frac{3}{4}``, ``\dfrac{-3}{4}``, ``\tfrac34``.
_TEX_FRAC_RE = re.compile(rf"\\[dt]?frac ?(?:{_FRAC_ARG} ?{_FRAC_ARG}|(\d)(\d))")
#: An exponent (``^2``, ``^{10}``): its digits are dropped and the "^" left, so that neither
#: the base nor the exponent reads as a number.
_TEX_POWER_RE = re.compile(r"\^ ?(?:\{ ?[+-]?\d+ ?\}|[+-]?\d+)")
#: Python's power ``2**10``: rewritten as "^" like a LaTeX exponent (not Markdown's bold
#: ``**8**``, whose stars have no digit after them, nor "**Answer:** 8").
_STAR_POWER_RE = re.compile(r"(?<=[\d)])\*\*\(?[+-]?\d+")
#: LaTeX escapes and spacing that touch numbers: ``\$``, ``\%``, ``1{,}234``, ``1\,234``.
_TEX_PLAIN = (("\\$", "$"), ("\\%", "%"), ("{,}", ","), ("\\,", "\u2009"), ("\\!", ""))


def _tex_fraction(m: re.Match[str]) -> str:
    if m.group(5) is not None:
        sign, num, den = "", m.group(5), m.group(6)
    else:
        sign = "-" if (m.group(1) == "-") != (m.group(3) == "-") else ""
        num, den = m.group(2), m.group(4)
    # After a digit ("1\frac{1}{2}") it is the fraction of a mixed number.
    before = m.string[m.start() - 1 : m.start()]
    return f"{' ' if before.isdigit() else ''}{sign}{num}/{den}"


def _untex(text: str) -> str:
    """``text`` with the LaTeX that writes numbers rewritten as plain text (see the module
    docstring); one pass each, so nested ``\\frac`` cost linear time (only the innermost, a
    fraction of integers, is read)."""
    if "**" in text:
        text = _STAR_POWER_RE.sub("^", text)
    if "\\" in text or "{" in text or "^" in text:
        for old, new in _TEX_PLAIN:
            text = text.replace(old, new)
        text = _TEX_FRAC_RE.sub(_tex_fraction, text)
        text = _TEX_POWER_RE.sub("^", text)
    return text


def _int(digits: str) -> int:
    """The value of a run of decimal digits, past Python's 4,300-digit limit on ``int(str)``
    (callers cap the length at :data:`MAX_DIGITS`)."""
    value = 0
    for i in range(0, len(digits), 4000):
        chunk = digits[i : i + 4000]
        value = value * 10 ** len(chunk) + int(chunk)
    return value


_CHUNK = 10**4000


def _digits(n: int) -> str:
    """``str(n)`` of a non-negative int, past the same limit."""
    if n < _CHUNK:
        return str(n)
    high, low = divmod(n, _CHUNK)
    return _digits(high) + str(low).zfill(4000)


def _canonical(m: re.Match[str]) -> list[str]:
    """The canonical texts of one matched number: one, none (a zero denominator, too many
    digits), or two for a "mixed number" whose fraction is not proper ("3 5/4")."""
    text = m.group()
    if sum(ch.isdigit() for ch in text) > MAX_DIGITS:
        return []
    minus = "-" if "-" in (m.group("sign") or "") else ""
    pct = "%" if m.group("pct") else ""
    if m.group("whole") is not None:
        whole, num, den = _int(m.group("whole")), _int(m.group("mnum")), _int(m.group("mden"))
        if 0 < num < den:
            return [_fraction_text(minus, whole * den + num, den, pct)]
        first = _fraction_text(minus, whole, 1, "")
        return [first, *([_fraction_text("", num, den, pct)] if den else [])]
    if m.group("num") is not None:
        num, den = _int(m.group("num")), _int(m.group("den"))
        return [_fraction_text(minus, num, den, pct)] if den else []
    whole = re.sub(r"\D", "", m.group("int")).lstrip("0") or "0"
    dec = (m.group("dec") or "").rstrip("0")
    body = whole + ("." + dec if dec else "")
    return [("-" if minus and body != "0" else "") + body + pct]


def _fraction_text(minus: str, num: int, den: int, pct: str) -> str:
    g = gcd(num, den)
    num, den = num // g, den // g
    body = _digits(num) if den == 1 else f"{_digits(num)}/{_digits(den)}"
    return ("-" if minus and num else "") + body + pct


def answer_tokens(text: str) -> list[str]:
    """The numbers of ``text`` in order, canonical (see :func:`normalize_number`), read by the
    rules of the module docstring; LaTeX numbers (``\\frac{3}{4}``, ``45\\%``) included."""
    return _tokens(_untex(text.translate(UNICODE_MINUSES)))


def _tokens(plain: str) -> list[str]:
    """:func:`answer_tokens` of a text already read by :func:`_untex`."""
    return [c for m in _TOKEN_RE.finditer(plain) for c in _canonical(m)]


def _usable(m: re.Match[str]) -> bool:
    """Whether :func:`_canonical` finds a number in ``m``, cheaply."""
    if len(m.group()) > MAX_DIGITS and sum(ch.isdigit() for ch in m.group()) > MAX_DIGITS:
        return False
    den = m.group("den")
    return den is None or den.strip("0") != ""


def _last_token(plain: str) -> str | None:
    """The last number of a text already read by :func:`_untex`, canonical, or None; only
    that one is normalised, so that a reply of a million numbers costs one pass."""
    last = None
    for m in _TOKEN_RE.finditer(plain):
        if _usable(m):
            last = m
    found = _canonical(last) if last is not None else []
    return found[-1] if found else None


def normalize_number(s: str | None) -> str | None:
    """Canonical text of one number, or None if ``s`` is not one number.

    Canonical means: no "$", no thousands separators, no sentence period, no leading zeros, no
    trailing decimal zeros ("$100.00" -> "100", "2.50" -> "2.5", "1 234.50" -> "1234.5"), sign
    kept ("-3"; "-0" -> "0"); a fraction in lowest terms ("6/8" -> "3/4", "4/2" -> "2",
    "1 1/2" -> "3/2", "\\frac{3}{4}" -> "3/4"); a percentage keeps its "%" ("45 %" -> "45%").
    Grading compares the values of canonical texts (:func:`same_number`), not the texts.
    """
    if s is None:
        return None
    t = _untex(str(s).translate(UNICODE_MINUSES)).strip().rstrip(".").strip()
    if t[:1] == "." or t[:2] in ("-.", "+."):
        t = t.replace(".", "0.", 1)  # ".5" -> "0.5"
    m = _WHOLE_RE.fullmatch(t)
    if m is None:
        return None
    found = _canonical(m)
    return found[0] if len(found) == 1 else None


def answer_value(s: str | None) -> tuple[Fraction, bool] | None:
    """The exact value of a number (any form :func:`normalize_number` reads) and whether it is
    a percentage ("45%" -> (45, True), "3/4" -> (3/4, False)), or None."""
    norm = normalize_number(s)
    m = _CANONICAL_RE.fullmatch(norm) if norm is not None else None
    if m is None:
        return None
    sign, whole, dec, den, pct = m.groups()
    if dec:
        value = Fraction(_int(whole + dec), 10 ** len(dec))
    else:
        value = Fraction(_int(whole), _int(den) if den else 1)
    return (-value if sign else value), bool(pct)


def same_number(answer: str | None, reference: str | None) -> bool:
    """True when ``answer`` and ``reference`` are the same number, compared exactly: as
    fractions, a percentage matching either its number or its hundredth (see the module
    docstring)."""
    a, r = answer_value(answer), answer_value(reference)
    if a is None or r is None:
        return False
    (av, a_pct), (rv, r_pct) = a, r
    if a_pct == r_pct:
        return av == rv
    pv, other = (av, rv) if a_pct else (rv, av)
    return other in (pv, pv / 100)


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` of ``text`` (braces balanced), or None when
    there is none or it is not closed within :data:`_BOXED_CHARS` characters."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = start + len("\\boxed")
    while i < len(text) and text[i] == " " and i < start + 10:
        i += 1
    if text[i : i + 1] != "{":
        return None
    depth, begin = 0, i + 1
    for j in range(i, min(len(text), begin + _BOXED_CHARS)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[begin:j]
    return None


def extract_number(response: str) -> str | None:
    """The number a response commits to, normalised, or None if it contains no number.

    The content of the last ``\\boxed{...}``, when it holds a number, is the answer (its last
    number: "\\boxed{3 + 5 = 8}" is 8). Otherwise the last number of the response is the answer
    (LiC's rule), except that the line of the last answer marker ("Answer:", which our system
    prompt asks for, "The answer is", or GSM8K's "####") wins over numbers written after it:
    models often add a remark after the answer ("Answer: 8. This took 2 steps."). On that line
    the last number is taken, because small models write "Answer: 3 + 5 = 8". If that line holds
    no number, the last number of the response is taken. Numbers are read as the module
    docstring says (fractions, mixed numbers, LaTeX, thousands groups, percentages).

    A response without any number in digits is read with its numbers written in words as digits
    (:func:`~icpo_eval.families.text.digits_for_number_words`: "Answer: seven", "twelve
    apples", "two dozen" -> 24, "half a dozen" -> 6, "one half" -> 1/2, "three quarters" ->
    3/4, "two thirds" -> 2/3, "three and a half hours" -> 7/2), by the same rules; a response
    with digits is read as written, words beside the digits ignored ("Half of the 24 eggs
    break, so 12 are left." is 12). Fraction words that are no quantity ("half of the
    problem", "the third shard") are not numbers.
    """
    if not response:
        return None
    text = _untex(response.translate(UNICODE_MINUSES))
    boxed = _last_boxed(text)
    if boxed is not None:
        found = _last_token(boxed)
        if found is not None:
            return found
    found = _last_token(text)
    if found is None:
        # Numbers in words are read in the last _SPELLED_CHARS characters only; a run of
        # them with more digits than Python converts ("nine hundred" x 100,000) is no answer.
        tail = text[-_SPELLED_CHARS:]
        try:
            spelled = digits_for_number_words(tail)
        except (ValueError, OverflowError, RecursionError, MemoryError):
            return None
        if spelled == tail:
            return None
        text = spelled
        found = _last_token(text)
        if found is None:
            return None
    markers = list(_ANSWER_MARKER_RE.finditer(text))
    if markers:
        rest = text[markers[-1].end() :].split("\n", 1)[0]
        on_line = _last_token(rest)
        if on_line is not None:
            return on_line
    return found


def reference_answer(inst: Instruction) -> str | None:
    """The instruction's reference answer, normalised; None if it has none.

    GSM8K and LiC math records keep a worked solution in ``answer`` whose last line is
    "#### N"; then N is the answer. A reference that is not a bare number ("18 apples") falls
    back to its first number.
    """
    raw = inst.fields.get("answer")
    if raw is None:
        return None
    text = str(raw)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    norm = normalize_number(text)
    if norm is not None:
        return norm
    found = answer_tokens(text)
    return found[0] if found else None


@register
class MathFamily(Family):
    """Arithmetic word problems; graded by exact value of the final number."""

    name = "math"
    answer_shape = "one final number (the quantity asked for), stated as the result"
    system_prompt_template = "system_math.j2"
    #: :func:`icpo_eval.families.math_make.generate` (option ``mix``: the share of each level).
    maker = "icpo_eval.families.math_make"
    #: The ``question`` paragraph: generated and LiC math records both carry one.
    full_prompt_fields = ("question",)

    def underspecified_variants(
        self, inst: Instruction, rng: random.Random, n: int = 2
    ) -> list[tuple[str, list[int]]]:
        """Math q*: the starting quantity is always among the removed shards.

        A story without its later additions still reads complete ("How many cookies does Ana
        have now? Ana bakes 4 cookies." has the answer 4), so no reader can tell that it is
        underspecified, and rewarding non-answers on such prompts teaches a policy never to
        answer: with those variants (and the sharded turns of a run), 39 steps of the 30-minute
        recipe took the non-answer rate on fully specified prompts from 38% to 88%. Without
        its first quantity a story visibly lacks a number ("How many cookies does Ana have now?
        Lena brings her 3 more cookies."). The first variant removes that shard alone, the
        others remove it with one more required shard.
        """
        removable = sorted(inst.required_ids - {inst.shards[0].shard_id})
        if not removable:
            return []
        start, rest = removable[0], removable[1:]
        removals = [[start]] + [[start, other] for other in rng.sample(rest, len(rest))]
        return [(shards_without(inst, removed), removed) for removed in removals[:n]]

    def extract(self, inst: Instruction, response: str) -> str | None:
        """See :func:`extract_number`."""
        return extract_number(response)

    def evaluate(self, inst: Instruction, answer: str | None) -> float:
        """1.0 when the answer is the reference's number (:func:`same_number`: exact values,
        "0.75" equals "3/4"), else 0.0."""
        ref = reference_answer(inst)
        if ref is None or answer is None:
            return 0.0
        return 1.0 if same_number(answer, ref) else 0.0
