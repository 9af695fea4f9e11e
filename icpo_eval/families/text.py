"""Text helpers shared by the families, the turn judges and the comparison: fenced code blocks,
numbers in a reply, sentences.

Two rules for "the numbers in a text" live here side by side, because their callers ask
different questions and changing either would change what is measured:

* :func:`numbers`, the rule judge's: the digits only, sign, "$" and commas dropped
  ("-$1,200.50" -> "1200.50"); any run of digits and commas is one number ("3,4,5" -> "345").
  The judge compares them with the numbers the user gave, so "-5" and "5" are the same number.
* :func:`number_tokens`, the math family's: each number as written, sign and "$" kept
  ("-$1,200.50"), for :func:`~icpo_eval.families.math.normalize_number`; thousands commas only
  in well-formed groups ("3,4,5" is three numbers); the Unicode minus sign and dashes read as
  "-".

Both skip digits inside identifiers ("x2", "H2O") and after a decimal point, and neither takes a
sentence's closing period for a decimal point. :data:`NUMBER_PATTERN` is the judge's number for
use inside the judge's larger patterns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "NUMBER_PATTERN",
    "UNICODE_MINUSES",
    "Fence",
    "fenced_blocks",
    "number_tokens",
    "numbers",
    "outside_fences",
    "split_sentences",
    "unwrap_fence",
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
    "-" (see the module docstring); the math family normalises the one it takes."""
    return _TOKEN_RE.findall(text.translate(UNICODE_MINUSES))


# --------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------

_SENTENCE_BREAK_RE = re.compile(r"(?<=[.?!])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``: split after ``.?!`` followed by blank space and at line
    breaks, each stripped of blank space and of list and emphasis marks (``*-#>``); empty
    pieces are dropped."""
    parts = _SENTENCE_BREAK_RE.split(text)
    return [p.strip(" \t*-#>") for p in parts if p.strip(" \t*-#>")]
