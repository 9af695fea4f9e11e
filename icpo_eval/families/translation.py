"""The ``translation`` family: a German document revealed chunk by chunk, scored with BLEU.

Only Lost-in-Conversation data exists for this family (WMT news documents): each record holds
``document_de`` (the source), ``document_en`` (the reference) and ``shards``, one or two German
sentences each. There is no generator: producing faithful German/English pairs needs data we do
not ship. The score is sacrebleu's BLEU of the answer against ``document_en``, divided by 100,
computed as LiC does (``corpus_bleu`` over the one document), so scores compare with LiC's.

Turn judging: a translation reply has no structural marker (no code fence, no "Answer:"), and the
rule judge's cues are numeric, so the family sets :attr:`Family.answer_by_extraction` and makes
:meth:`TranslationFamily.extract` conservative instead: it returns None for a reply that reads as
a question or remark to the user rather than a translation (shorter than half of the first
chunk, or mostly questions while the source is not). Everything else is an attempt, graded by
BLEU; an untranslated or unrelated text simply scores low.
"""

from __future__ import annotations

import re
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, register
from icpo_eval.families.text import strip_wrapping
from icpo_eval.records import Instruction

__all__ = ["TranslationFamily", "bleu_score", "strip_preamble"]

#: A first line that introduces the translation rather than being part of it.
_PREAMBLE_RE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|here(?:'s| is| are)|below is)\b[^\n]{0,120}"
    r"|(?:english )?translation\s*(?:\([^)]*\))?\s*:\s*)$",
    re.IGNORECASE,
)
_LABEL_RE = re.compile(
    r"^\s*(?:\*\*)?(?:english )?translation\s*(?::\s*\*\*|\*\*\s*:|:)\s*", re.IGNORECASE
)
_SENTENCE_END_RE = re.compile(r"[.!?]+(?=\s|$)")


def strip_preamble(response: str) -> str:
    """The reply without an introducing line ("Here is the translation:"), a "Translation:"
    label, surrounding code fences or quotes."""
    text = strip_wrapping(response, _PREAMBLE_RE, _LABEL_RE)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _question_share(text: str) -> float:
    ends = _SENTENCE_END_RE.findall(text)
    if not ends:
        return 1.0 if text.rstrip().endswith("?") else 0.0
    return sum("?" in e for e in ends) / len(ends)


def bleu_score(hypothesis: str, reference: str) -> float:
    """BLEU / 100 of one document, as LiC computes it (sacrebleu ``corpus_bleu``)."""
    import sacrebleu

    bleu = sacrebleu.corpus_bleu([hypothesis.strip()], [[reference.strip()]])
    return max(0.0, min(1.0, bleu.score / 100.0))


def _field(inst: Instruction, key: str) -> str:
    value = inst.fields.get(key)
    if not isinstance(value, str) or not value.strip():
        raise IcpoError(f"{inst.task_id}: translation instruction without {key!r}")
    return value


@register
class TranslationFamily(Family):
    """German → English document translation; graded by BLEU against ``document_en``."""

    name = "translation"
    answer_shape = "the whole text translated into the target language"
    system_prompt_template = "system_translation.j2"
    answer_by_extraction = True
    #: The system prompt's "(for example, whether more of the document is coming)".
    asked_about = (
        "document",
        "coming",
        "chunk",
        "rest",
        "remaining",
        "continue",
        "translate",
        "translation",
        "line",
        "break",
        "paragraph",
    )

    def full_prompt(self, inst: Instruction) -> str:
        """The whole German document with the request, as LiC's full prompt has it."""
        source = inst.fields.get("document_de")
        if not isinstance(source, str) or not source.strip():
            source = "\n".join(s.shard for s in inst.shards)
        return f"Translate the following German document into English:\n\n{source}"

    def extract(self, inst: Instruction, response: str) -> str | None:
        """The translation in the reply, or None when the reply is not one (see module doc)."""
        text = strip_preamble(response or "")
        if not text:
            return None
        first = inst.shards[0].shard if inst.shards else ""
        if len(text) < 0.5 * len(first.strip()):
            return None
        if _question_share(text) > 0.5 and _question_share(first) <= 0.5:
            return None
        return text

    def evaluate(self, inst: Instruction, answer: str | None) -> float:
        """BLEU / 100 of the answer against ``document_en``; 0.0 without an answer."""
        reference = _field(inst, "document_en")
        if answer is None or not answer.strip():
            return 0.0
        return bleu_score(answer, reference)

    def grade(self, inst: Instruction, answer: str | None) -> tuple[float, dict[str, Any] | None]:
        score = self.evaluate(inst, answer)
        if answer is None:
            return score, None
        return score, {"bleu": round(score * 100, 2)}
