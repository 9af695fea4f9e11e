"""The ``math`` family: multi-step arithmetic word problems, revealed one quantity at a time.

Shard 1 is the question, without any number; every later shard is one sentence carrying one
quantity, and one optional shard may be a distractor. The problems are made by
:mod:`icpo_eval.families.math_make` (which says why they are generated and how); this module
extracts and grades answers, for those and for GSM8K and Lost-in-Conversation math records.

Extraction and grading follow Lost-in-Conversation's math task (final number, exact match) with
its normalisation bug fixed: LiC stripped trailing zeros with ``rstrip`` and read "$100.00" as 1.
"""

from __future__ import annotations

import random
import re

from icpo_eval.families import Family, register, shards_without
from icpo_eval.families.text import UNICODE_MINUSES, digits_for_number_words, number_tokens
from icpo_eval.records import Instruction

__all__ = ["MathFamily", "extract_number", "normalize_number", "reference_answer"]

# --------------------------------------------------------------------------------------------
# Numbers: extraction and normalisation
# --------------------------------------------------------------------------------------------

#: "Answer: 8", "**Answer:** 8", "Final answer: 8" — the format the system prompt asks for — and
#: what small models trained on GSM8K write on their own: "#### 8", "The answer is: 8".
_ANSWER_MARKER_RE = re.compile(r"answer\W{0,3}:|answer\s+is\b|####", re.IGNORECASE)
_CANONICAL_RE = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?")
#: How much of a reply without digits is read for numbers written in words (the end, where
#: the answer is).
_SPELLED_CHARS = 20_000


def normalize_number(s: str) -> str | None:
    """Canonical text of one number, or None if ``s`` is not a number.

    Canonical means: no "$", no thousands commas, no sentence period, no leading zeros, no
    trailing decimal zeros ("$100.00" -> "100", "2.50" -> "2.5", "1,234.50" -> "1234.5"), sign
    kept ("-3"; "-0" -> "0"). Exact string equality of canonical forms is then the grading rule,
    which avoids float rounding surprises.
    """
    if s is None:
        return None
    t = str(s).strip().translate(UNICODE_MINUSES)
    t = t.replace("$", "").replace(",", "").replace(" ", "")
    t = t.rstrip(".")
    m = _CANONICAL_RE.fullmatch(t)
    if m is None:
        return None
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    if not whole and not frac:
        return None
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    text = whole + ("." + frac if frac else "")
    if text == "0" or sign != "-":
        return text
    return "-" + text


def extract_number(response: str) -> str | None:
    """The number a response commits to, normalised, or None if it contains no number.

    The last number of the response is the answer (LiC's rule), except that the line of the last
    answer marker ("Answer:", which our system prompt asks for, "The answer is", or GSM8K's
    "####") wins over numbers written after it: models often add a remark after the answer
    ("Answer: 8. This took 2 steps."). On that line the last number is taken, because small
    models write "Answer: 3 + 5 = 8". If that line holds no number, the last number of the
    response is taken.

    A response without any number in digits is read with its numbers written in words as digits
    (:func:`~icpo_eval.families.text.digits_for_number_words`: "Answer: seven", "twelve
    apples"), by the same rules; a response with digits is read as written.
    """
    if not response:
        return None
    if not number_tokens(response):
        # Numbers in words are read in the last _SPELLED_CHARS characters only; a run of
        # them with more digits than Python converts ("nine hundred" x 100,000) is no answer.
        tail = response[-_SPELLED_CHARS:]
        try:
            spelled = digits_for_number_words(tail)
        except (ValueError, OverflowError, RecursionError, MemoryError):
            return None
        if spelled == tail or not number_tokens(spelled):
            return None
        response = spelled
    markers = list(_ANSWER_MARKER_RE.finditer(response))
    if markers:
        rest = response[markers[-1].end() :].split("\n", 1)[0]
        found = number_tokens(rest)
        if found:
            return normalize_number(found[-1])
    found = number_tokens(response)
    return normalize_number(found[-1]) if found else None


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
    found = number_tokens(text)
    return normalize_number(found[0]) if found else None


@register
class MathFamily(Family):
    """Arithmetic word problems; graded by exact match of the final number."""

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
        """1.0 when the normalised answer equals the normalised reference, else 0.0."""
        ref = reference_answer(inst)
        if ref is None or answer is None:
            return 0.0
        return 1.0 if normalize_number(answer) == ref else 0.0
