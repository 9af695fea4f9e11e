"""The ``data2text`` family: a one-sentence description of a table's highlighted cells.

Lost-in-Conversation's data2text task is built on ToTTo (Parikh et al. 2020): a Wikipedia table,
some of its cells highlighted, the page and section it comes from, and one to three reference
sentences written by annotators that state what the highlighted cells say. A record carries
``table_html``, ``table_highlighted_html``, ``raw_table`` (rows of cells with ``value``,
``is_header`` and, in generated records, ``highlighted``), ``references``, ``fewshot_descriptions``
and ``metadata`` (page title, section title ...); LiC's release writes several of them as strings
holding JSON or Python literals, so every one is read through
:func:`~icpo_eval.records.decode_field`. The generated instances are made by
:mod:`icpo_eval.families.data2text_make`.

Grading is what the benchmark does: sacrebleu's corpus BLEU of the answer against *all* the
references at once (multi-reference: ``corpus_bleu([answer], [[ref1], [ref2], ...])``), divided
by 100. A reference itself therefore scores 1, and a sentence about other cells scores near 0.

Turn judging: like translation, a description has no structural marker, so the family sets
:attr:`Family.answer_by_extraction` and keeps :meth:`Data2TextFamily.extract` conservative. The
whole reply is the answer (LiC grades the full response), less an introducing line ("Here is the
description:"), a "Description:" label, a code fence or quotes around it. It is *not* an answer
(None) when it is far too short to describe anything (fewer than :data:`MIN_WORDS` words), when
most of its sentences are questions, or when every sentence that is not a question talks to the
user ("I can write it once you tell me which cells are highlighted"): a description of a table is
written in the third person.

Hostile replies: only the first :data:`MAX_ANSWER_CHARS` characters of a reply are read. A
one-sentence description is a few hundred characters, and BLEU of a text that long against
sentences of twenty words is close to 0 whatever it holds, so the cut changes no meaningful score
and keeps a 10 MB reply as quick to grade as a short one.
"""

from __future__ import annotations

import html
import re
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, refuse_bad_records, register
from icpo_eval.families.text import BRANCHING, PLACEHOLDER, split_sentences, strip_wrapping
from icpo_eval.records import Instruction, decode_field

__all__ = [
    "MAX_ANSWER_CHARS",
    "MIN_WORDS",
    "Data2TextFamily",
    "bleu_against",
    "metadata",
    "references",
    "render_table",
    "strip_preamble",
]

#: How much of a reply is read (see the module docstring).
MAX_ANSWER_CHARS = 10_000
#: A reply with fewer words than this describes nothing ("OK.", "Sure thing.").
MIN_WORDS = 4
#: Caps on a record's references: ToTTo has at most three, each one sentence.
MAX_REFERENCES = 50
MAX_REFERENCE_CHARS = 5_000

#: A first line that introduces the description rather than being part of it; only dropped when
#: more lines follow, so that a one-line description starting "Sure Thing won ..." is kept.
_PREAMBLE_RE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|here(?:'s| is| are)|below is|absolutely)\b"
    r"[^\n]{0,160}|(?:\*\*)?(?:one-sentence |table )?description(?:\*\*)?\s*:?\s*(?:\*\*)?)$",
    re.IGNORECASE,
)
#: A "Description:" label before the sentence on the same line.
_LABEL_RE = re.compile(
    r"^\s*(?:\*\*)?(?:one-sentence |table )?description\s*(?::\s*\*\*|\*\*\s*:|:)\s*",
    re.IGNORECASE,
)
#: Quotes that may wrap the whole description.
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}
#: Quoted titles inside a sentence ("I Will Survive"): left out before looking for first- and
#: second-person words, which a title may contain.
_QUOTED_RE = re.compile(r"\"[^\"\n]*\"|\u201c[^\u201d\n]*\u201d")
#: Words of a sentence addressed to the user: the second person, "please", and the first person
#: doing something ("I can", "I'll", "let me"). A table description has none of them.
_ADDRESS_RE = re.compile(
    r"\b(?:[Yy]ou|YOU|[Yy]our|[Yy]ours|[Yy]ourself|[Pp]lease|[Ll]et me|[Ll]et's|[Ll]et us)\b"
    r"|\bI(?:'m|'ll|'d|'ve| am| can| could| will| would| need| cannot| can't| don't| do not"
    r"| have| see| think| just| must)\b"
)
#: Placeholders a model may leave in a templated sentence ("[Player Name]", "____").
_BRACKET_PLACEHOLDER_RE = re.compile(r"\[[A-Za-z][\w .'/-]{0,40}\]|_{3,}")


def strip_preamble(response: str) -> str:
    """The reply without an introducing line ("Here is a one-sentence description:"), a
    "Description:" label, a code fence around it or quotes around the whole of it."""
    text = strip_wrapping(response, _PREAMBLE_RE, _LABEL_RE)
    if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1] and _one_quoted(text):
        text = text[1:-1].strip()
    return text


def _one_quoted(text: str) -> bool:
    """Whether the quotes at both ends of ``text`` enclose all of it: ``"X won "Song" in 2001"``
    is one quoted sentence (the quotes inside open and close in pairs); ``"A" and "B"`` is not
    (the first quote inside closes the first one)."""
    inner = text[1:-1]
    close = _QUOTE_PAIRS[text[0]]
    if close != text[0]:  # curly quotes say which way they point
        return inner.count(text[0]) == inner.count(close)
    first = inner.find(close)
    if first == -1:
        return True
    opens = first == 0 or inner[first - 1].isspace() or inner[first - 1] in "([{"
    return opens and inner.count(close) % 2 == 0


def _addresses_user(sentence: str) -> bool:
    """Whether a sentence talks to the user (outside quoted titles)."""
    return bool(_ADDRESS_RE.search(_QUOTED_RE.sub("", sentence)))


def _is_question(sentence: str) -> bool:
    return sentence.rstrip(" *_)\"'\u201d").endswith("?")


# --------------------------------------------------------------------------------------------
# Reading a record's fields
# --------------------------------------------------------------------------------------------


def references(inst: Instruction) -> list[str]:
    """The reference descriptions of a record, stripped; :class:`IcpoError` naming the task
    when ``references`` is missing or not a non-empty list of non-empty strings."""
    where = f"{inst.task_id}: data2text 'references'"
    raw = decode_field(inst.fields.get("references"), where)
    if not isinstance(raw, list) or not raw:
        raise IcpoError(f"{where} must be a non-empty list of strings, got {type(raw).__name__}")
    if len(raw) > MAX_REFERENCES:
        raise IcpoError(f"{where}: {len(raw)} references (at most {MAX_REFERENCES}); refused")
    out: list[str] = []
    for i, ref in enumerate(raw):
        if not isinstance(ref, str) or not ref.strip():
            raise IcpoError(f"{where}: item {i} is not a non-empty string")
        if len(ref) > MAX_REFERENCE_CHARS:
            raise IcpoError(f"{where}: item {i} has {len(ref)} characters; refused")
        out.append(ref.strip())
    return out


def metadata(inst: Instruction) -> dict[str, Any]:
    """The record's ``metadata`` (page title, section title ...) as a dict; empty when absent;
    :class:`IcpoError` naming the task when it is something other than a mapping."""
    where = f"{inst.task_id}: data2text 'metadata'"
    raw = decode_field(inst.fields.get("metadata"), where)
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, dict):
        raise IcpoError(f"{where} must be a mapping, got {type(raw).__name__}")
    return raw


def render_table(rows: Any, where: str) -> str:
    """HTML of a ``raw_table`` (a list of rows, each a list of cells with ``value``,
    ``is_header`` and optionally ``highlighted``), highlighted cells marked
    ``class="highlighted"``; :class:`IcpoError` naming ``where`` for any other shape."""
    if not isinstance(rows, list) or not rows:
        raise IcpoError(f"{where} must be a non-empty list of rows")
    out = ["<table>"]
    for r, row in enumerate(rows):
        if not isinstance(row, list):
            raise IcpoError(f"{where}: row {r} is not a list of cells")
        cells = []
        for c, cell in enumerate(row):
            if not isinstance(cell, dict) or "value" not in cell:
                raise IcpoError(f"{where}: row {r} cell {c} has no 'value'")
            tag = "th" if cell.get("is_header") is True else "td"
            mark = ' class="highlighted"' if cell.get("highlighted") is True else ""
            cells.append(f"<{tag}{mark}>{html.escape(str(cell['value']))}</{tag}>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _text_field(inst: Instruction, key: str) -> str | None:
    """A field that should be text: stripped, or None when absent or empty; IcpoError naming the
    task for any other type."""
    value = inst.fields.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise IcpoError(
            f"{inst.task_id}: data2text {key!r} must be text, got {type(value).__name__}"
        )
    return value.strip() or None


def _fewshot_text(inst: Instruction) -> str | None:
    """``fewshot_descriptions`` as text: LiC writes one string; a list of strings (or a string
    holding one) becomes one description per line."""
    where = f"{inst.task_id}: data2text 'fewshot_descriptions'"
    raw = decode_field(inst.fields.get("fewshot_descriptions"), where)
    if raw is None:
        return None
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        raw = "\n".join(f"- {x.strip()}" for x in raw if x.strip())
    if not isinstance(raw, str):
        raise IcpoError(f"{where} must be text or a list of strings")
    return raw.strip() or None


def _table_text(inst: Instruction) -> str | None:
    """The table as the full prompt shows it: the highlighted HTML, else ``raw_table`` rendered
    with its highlights, else the plain HTML; None when the record has no table."""
    highlighted = _text_field(inst, "table_highlighted_html")
    if highlighted:
        return highlighted
    if inst.fields.get("raw_table") not in (None, ""):
        where = f"{inst.task_id}: data2text 'raw_table'"
        return render_table(decode_field(inst.fields["raw_table"], where), where)
    return _text_field(inst, "table_html")


def bleu_against(answer: str, refs: list[str]) -> float:
    """Multi-reference BLEU / 100 of one sentence, as LiC computes it: sacrebleu ``corpus_bleu``
    with each reference as a reference stream of its own; clamped to [0, 1]."""
    import sacrebleu

    bleu = sacrebleu.corpus_bleu([answer.strip()], [[ref] for ref in refs])
    return max(0.0, min(1.0, bleu.score / 100.0))


# --------------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------------


@register
class Data2TextFamily(Family):
    """One sentence describing a table's highlighted cells; graded by multi-reference BLEU."""

    name = "data2text"
    answer_shape = "one sentence that describes the highlighted cells of the table"
    system_prompt_template = "system_data2text.j2"
    answer_by_extraction = True
    maker = "icpo_eval.families.data2text_make"
    #: The system prompt's "(for example, which cells are highlighted or which page the table
    #: comes from)" and the parts of the task it names.
    asked_about = (
        "table",
        "cell",
        "cells",
        "highlighted",
        "highlight",
        "row",
        "column",
        "page",
        "section",
        "title",
        "context",
        "sentence",
        "description",
        "style",
    )

    def full_prompt(self, inst: Instruction) -> str:
        """The table, its context and the request as one text, the way LiC's fully specified
        prompt presents them: the highlighted table, the metadata as ``key: value`` lines, the
        style wishes of a generated record, the example descriptions of other tables. A record
        without any table gets its shards joined."""
        table = _table_text(inst)
        if table is None:
            return super().full_prompt(inst)
        parts = [
            "Please write a one-sentence description of the following table, "
            "covering its highlighted cells.",
            f"Table:\n{table}",
        ]
        context = "\n".join(
            f"{key}: {value}" for key, value in metadata(inst).items() if str(value).strip()
        )
        if context:
            parts.append(f"Context:\n{context}")
        style = decode_field(inst.fields.get("style"), f"{inst.task_id}: data2text 'style'")
        if isinstance(style, list) and style and all(isinstance(s, str) for s in style):
            parts.append("Style:\n" + "\n".join(style))
        fewshot = _fewshot_text(inst)
        if fewshot:
            parts.append(f"Descriptions of other tables, as examples of the style:\n{fewshot}")
        parts.append("Reply with one clear, natural sentence.")
        return "\n\n".join(parts)

    def extract(self, inst: Instruction, response: str) -> str | None:
        """The description in the reply, or None when the reply is not one (module docstring)."""
        text = strip_preamble((response or "")[:MAX_ANSWER_CHARS])
        if len(text.split()) < MIN_WORDS:
            return None
        sentences = split_sentences(text)
        questions = [s for s in sentences if _is_question(s)]
        statements = [s for s in sentences if not _is_question(s)]
        if not statements or len(questions) > len(statements):
            return None
        if all(_addresses_user(s) for s in statements):
            return None
        return text

    def answer_problem(self, inst: Instruction, response: str, answer: str) -> str | None:
        """``"template"`` for a sentence with blanks left to fill ("[Player Name] won ..."),
        ``"alternatives"`` for several descriptions offered per reading ("If you meant the 2012
        row, ...; otherwise ..."), else None."""
        if PLACEHOLDER.search(answer) or _BRACKET_PLACEHOLDER_RE.search(answer):
            return "template"
        if len(split_sentences(answer)) > 1 and BRANCHING.search(answer):
            return "alternatives"
        return None

    def preflight(self, instructions: list[Instruction]) -> list[str]:
        """Refuse, in one line naming them, records whose references cannot be graded."""
        refuse_bad_records(instructions, references)
        return []

    def evaluate(self, inst: Instruction, answer: str | None) -> float:
        """Multi-reference BLEU / 100 of the answer; 0.0 without an answer."""
        refs = references(inst)
        if answer is None or not answer.strip():
            return 0.0
        return bleu_against(answer[:MAX_ANSWER_CHARS], refs)

    def grade(self, inst: Instruction, answer: str | None) -> tuple[float, dict[str, Any] | None]:
        """The score, and BLEU on sacrebleu's 0–100 scale as the turn's detail."""
        score = self.evaluate(inst, answer)
        if answer is None:
            return score, None
        return score, {"bleu": round(score * 100, 2)}
