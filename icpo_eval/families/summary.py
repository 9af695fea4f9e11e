"""The ``summary`` family: summarise a haystack of documents, citing where each point comes from.

This is Lost-in-Conversation's summary task (Summary of a Haystack, SummHay). A record carries
``documents`` (each with an id and a text; LiC's also carry ``document_index``, the number the
documents are cited by), a ``query``, reference ``insights`` (``{insight_id, insight}``),
``insightid2ref_citations`` (insight id -> the documents that state it), ``topic`` and
``domain``. Any of these may arrive as a string holding JSON or a Python literal (LiC's release
and Arrow datasets store them so); they are always read through
:func:`icpo_eval.records.decode_field`. Generated records come from
:mod:`icpo_eval.families.summary_make`.

**Where the documents are.** In the assistant's system prompt (``prompts/system_summary.j2``),
numbered "Document 1", "Document 2" ...; the shards reveal the request piece by piece (the
intent, the question to focus on, the citation format, the style, the length). LiC's own
sharded summary records instead reveal batches of documents per turn (``doc_idxs`` on each
shard, with empty shard text); :class:`~icpo_eval.records.Shard` keeps no such field, so here
every document of a record is in the system prompt from the first turn.

**Citations** are read from the summary in the forms models write: ``[1]``, ``[1, 3]``,
``[2-4]``, ``[Doc 2]``, ``[doc2; doc5]``, ``(doc_3)``, ``(Document 4)`` (a parenthesis only when
it names a document, so that "(2019)" is no citation). A document's number is its
``document_index`` if it has one, else the digits of its id (``doc3`` -> 3), else its id.

**Scoring** follows LiC's idea. The summary is cut into units: its lines (list marks dropped),
each split into sentences; a sentence without citations takes those of the next sentence of the
same line that has some ("X. Y [2]." cites 2 for X too). As in LiC, a summary over
:data:`MAX_SUMMARY_WORDS` words is trimmed: every line keeps the same share of its words, so an
overlong summary loses the ends of its lines, citations included. Then, for every reference
insight, the unit that covers it best gives its coverage (full 1, partial 0.5, none 0) and its
citations; the insight's citation score is the F1 of those citations against the insight's
reference documents, and its joint score is coverage x citation F1. The score of the summary is
the mean joint score over the insights (LiC's ``joint_score``). One departure: LiC's references
list every document of the whole topic that states an insight, including documents the model
was never shown; here the reference is restricted to the documents of the record (when that
leaves any), so citation recall is measured against what the model could cite.

Two graders decide coverage:

* ``rule`` (the offline default) is a **rule-based approximation**, not the benchmark's judge:
  an insight is covered by the unit holding the largest share of the insight's content words
  (lower-cased, stop words dropped, light suffix stemming, numbers kept); a share of at least
  :data:`FULL_COVERAGE_AT` is full coverage, of at least :data:`PARTIAL_COVERAGE_AT` partial.
  It rewards summaries that reuse the documents' wording and misses paraphrases; every score it
  gives says so: ``detail["grader"] == "rule-approx"``.
* ``llm:MODEL`` (:class:`LLMSummaryGrader`) asks a model, as LiC does, with
  ``prompts/grader_summary.j2``: for every insight, its coverage and the unit that covers it
  (whose citations are then read by the code above). An unparsable reply is retried twice, then
  the rule approximation decides and the detail says ``"rule-approx (fallback from llm:MODEL)"``;
  an API that gives up (:class:`~icpo_eval.models.base.CallFailed`) propagates.

:func:`fake_grader_reply` computes, from the grader prompt alone, the reply that the local test
server gives to grader requests (the rule approximation's verdicts in the grader's JSON).

Turn judging: a summary has no structural marker, so the family sets
:attr:`~icpo_eval.families.Family.answer_by_extraction` and :meth:`SummaryFamily.extract` is
conservative: a reply of fewer than :data:`MIN_SUMMARY_WORDS` words, or whose sentences are
mostly questions, is no summary. Hostile replies cost bounded work: only the first
:data:`MAX_READ_CHARS` characters and :data:`MAX_UNITS` units are read.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, refuse_bad_records, register
from icpo_eval.families.text import split_sentences, unwrap_fence, visible_text
from icpo_eval.records import Instruction, decode_field

__all__ = [
    "FULL_COVERAGE_AT",
    "PARTIAL_COVERAGE_AT",
    "Haystack",
    "LLMSummaryGrader",
    "RuleSummaryGrader",
    "SummaryFamily",
    "Unit",
    "content_words",
    "doc_key",
    "fake_grader_reply",
    "haystack",
    "parse_citations",
    "summary_units",
]

#: Words of a summary that are graded (LiC's cap); longer summaries are trimmed (module doc).
MAX_SUMMARY_WORDS = 300
#: Characters of a reply that are read at all; a 300-word summary takes about 2,000.
MAX_READ_CHARS = 50_000
#: Units (sentences) of a summary that are graded at most.
MAX_UNITS = 400
#: A reply with fewer words is no summary (a remark, a one-word answer).
MIN_SUMMARY_WORDS = 12
#: Share of an insight's content words that one unit must hold for full / partial coverage.
FULL_COVERAGE_AT = 0.7
PARTIAL_COVERAGE_AT = 0.4
#: Coverage labels and what each is worth (LiC: partial coverage counts half).
COVERAGE_SCORES: dict[str, float] = {"full": 1.0, "partial": 0.5, "none": 0.0}
#: Caps on a record, so that a hostile one is one clear error rather than a slow grade.
MAX_DOCUMENTS = 1000
MAX_INSIGHTS = 200
#: Characters of an LLM grader's reply that are searched for its JSON.
_MAX_REPLY_CHARS = 200_000

# --------------------------------------------------------------------------------------------
# Reading a record
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One document: ``key`` is what citations name ("3"), ``label`` how the prompt shows it."""

    key: str
    label: str
    text: str


@dataclass(frozen=True)
class Insight:
    """One reference insight and the keys of the documents that state it."""

    insight_id: str
    text: str
    citations: frozenset[str]


@dataclass(frozen=True)
class Haystack:
    """Everything of a summary record that grading and prompting need, decoded and checked."""

    task_id: str
    documents: tuple[Document, ...]
    insights: tuple[Insight, ...]
    query: str
    topic: str
    domain: str

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(d.key for d in self.documents)


_DOC_NUMBER_RE = re.compile(r"(?:documents?|docs?|sources?)?[\s_#:.\-]*(\d{1,9})")


def doc_key(value: Any) -> str | None:
    """The key a document reference names: ``3``, ``"3"``, ``"doc3"``, ``"Doc 3"``,
    ``"doc_3"`` -> ``"3"``; another string -> itself, stripped and lower-cased; None for
    anything else (or an empty string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return str(int(value))
    if not isinstance(value, str):
        return None
    text = value.strip().casefold()
    if not text or len(text) > 200:
        return None
    m = _DOC_NUMBER_RE.fullmatch(text)
    return str(int(m.group(1))) if m else text


def _first(d: dict[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if d.get(name) is not None:
            return d[name]
    return None


def _documents(raw: Any, where: str) -> tuple[Document, ...]:
    if isinstance(raw, dict):  # {id: text}
        raw = [{"document_id": k, "document_text": v} for k, v in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise IcpoError(f"{where}: 'documents' must be a non-empty list")
    if len(raw) > MAX_DOCUMENTS:
        raise IcpoError(f"{where}: more than {MAX_DOCUMENTS} documents; refused")
    out: list[Document] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"document_text": item}
        if not isinstance(item, dict):
            raise IcpoError(f"{where}: document {i + 1} is not an object")
        text = _first(item, ("document_text", "text", "content", "document"))
        if not isinstance(text, str) or not text.strip():
            raise IcpoError(f"{where}: document {i + 1} has no text")
        ident = _first(item, ("document_index", "document_id", "doc_id", "id"))
        key = doc_key(ident) if ident is not None else str(i + 1)
        if key is None:
            raise IcpoError(f"{where}: document {i + 1} has an unusable id {ident!r:.60}")
        if key in seen:
            raise IcpoError(f"{where}: two documents are numbered {key!r}")
        seen.add(key)
        label = key if key.isdigit() else str(ident).strip()
        out.append(Document(key, label, text.strip()))
    return tuple(out)


def _citation_map(raw: Any, where: str) -> dict[str, frozenset[str]]:
    if not isinstance(raw, dict):
        raise IcpoError(f"{where}: 'insightid2ref_citations' must map insight ids to documents")
    out: dict[str, frozenset[str]] = {}
    for k, v in raw.items():
        v = decode_field(v, where)
        items = v if isinstance(v, list) else [v]
        keys = {doc_key(x) for x in items}
        if None in keys:
            raise IcpoError(f"{where}: citations of insight {k!r:.60} are not document ids")
        out[str(k).strip()] = frozenset(x for x in keys if x is not None)
    return out


def _insights(
    raw: Any, refs: dict[str, frozenset[str]], present: frozenset[str], where: str
) -> tuple[Insight, ...]:
    if not isinstance(raw, list) or not raw:
        raise IcpoError(f"{where}: 'insights' must be a non-empty list")
    if len(raw) > MAX_INSIGHTS:
        raise IcpoError(f"{where}: more than {MAX_INSIGHTS} insights; refused")
    out: list[Insight] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"insight_id": str(i + 1), "insight": item}
        if not isinstance(item, dict):
            raise IcpoError(f"{where}: insight {i + 1} is not an object")
        ident = _first(item, ("insight_id", "id"))
        text = _first(item, ("insight", "text", "insight_text"))
        if ident is None or not isinstance(text, str) or not text.strip():
            raise IcpoError(f"{where}: insight {i + 1} needs an id and a text")
        iid = str(ident).strip()
        if iid in seen:
            raise IcpoError(f"{where}: two insights have the id {iid!r:.60}")
        seen.add(iid)
        cited = refs.get(iid, frozenset())
        # Measured against the documents the model was shown, when any of them are cited.
        shown = cited & present
        out.append(Insight(iid, text.strip(), shown or cited))
    return tuple(out)


def haystack(inst: Instruction) -> Haystack:
    """The record's documents, insights and reference citations, decoded (string-encoded fields
    included) and checked; a malformed record raises one IcpoError naming its task id."""
    where = f"{inst.task_id}: summary instruction"
    f = inst.fields
    for name in ("documents", "insights", "insightid2ref_citations"):
        if f.get(name) is None:
            raise IcpoError(f"{where} without {name!r}")
    documents = _documents(decode_field(f["documents"], f"{where} documents"), where)
    refs = _citation_map(decode_field(f["insightid2ref_citations"], f"{where} citations"), where)
    present = frozenset(d.key for d in documents)
    insights = _insights(decode_field(f["insights"], f"{where} insights"), refs, present, where)
    texts = [f.get(k) for k in ("query", "topic", "domain")]
    query, topic, domain = (t.strip() if isinstance(t, str) else "" for t in texts)
    return Haystack(inst.task_id, documents, insights, query, topic, domain)


# --------------------------------------------------------------------------------------------
# Reading a summary: citations, units, content words
# --------------------------------------------------------------------------------------------

_BRACKET_RE = re.compile(r"\[([^\[\]\n]{1,120})\]|\(([^()\n]{1,120})\)")
_ITEM_SPLIT_RE = re.compile(r"\s*(?:,|;|&|\band\b)\s*", re.I)
_DOC_PREFIX_RE = re.compile(r"^(?:documents?|docs?|sources?)(?![a-z])[\s_#:.\-]*")
_RANGE_RE = re.compile(r"(\d{1,6})\s*[-\u2013]\s*(\d{1,6})")
#: The longest range a citation may span ("[1-40]" is read as no citation).
_MAX_RANGE = 20


def _citation_items(content: str, known: frozenset[str], paren: bool) -> list[str] | None:
    """The document keys a bracket's content cites, or None when it is not a citation."""
    keys: list[str] = []
    for n, item in enumerate(_ITEM_SPLIT_RE.split(content.strip().casefold())):
        item = item.strip()
        if not item:
            continue
        bare = _DOC_PREFIX_RE.sub("", item)
        if paren and n == 0 and bare == item:
            return None  # "(3)", "(2019)": a parenthesis cites only when it names a document
        if bare.isdigit() and len(bare) <= 9:
            keys.append(str(int(bare)))
        elif (m := _RANGE_RE.fullmatch(bare)) and 0 <= int(m[2]) - int(m[1]) <= _MAX_RANGE:
            keys.extend(str(k) for k in range(int(m[1]), int(m[2]) + 1))
        elif item in known or bare in known:
            keys.append(item if item in known else bare)
        else:
            return None
    return keys or None


def parse_citations(text: str, known: Iterable[str] = ()) -> tuple[frozenset[str], str]:
    """The document keys ``text`` cites (see the module doc for the forms) and the text with
    its citations blanked out. ``known``: the record's document keys, so that documents with
    non-numeric ids can be cited by id."""
    known_keys = frozenset(known)
    cited: set[str] = set()

    def blank(m: re.Match[str]) -> str:
        content, paren = (m[1], False) if m[1] is not None else (m[2], True)
        keys = _citation_items(content, known_keys, paren)
        if keys is None:
            return m[0]
        cited.update(keys)
        return " "

    rest = _BRACKET_RE.sub(blank, text)
    return frozenset(cited), rest


_WORD_RE = re.compile(r"[^\W_]+")
_STOP_WORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each few
    for from further had has have having he her here hers him his how i if in into is it its
    itself just me more most my no nor not now of off on once only or other our ours out over
    own same she should so some such than that the their theirs them then there these they
    this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours one per said says say""".split()
)


def _stem(word: str) -> str:
    """A crude suffix stem, the same on both sides of a comparison ("riders" -> "rider")."""
    if word.isdigit():
        return word
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", "e"), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)] + repl
    return word


def content_words(text: str) -> frozenset[str]:
    """The stems of the words of ``text`` that carry content: lower-cased, stop words and
    one-letter words dropped, numbers kept."""
    words = _WORD_RE.findall(text.casefold())
    return frozenset(
        _stem(w) for w in words if w not in _STOP_WORDS and (len(w) > 1 or w.isdigit())
    )


@dataclass(frozen=True)
class Unit:
    """One graded piece of a summary (a sentence): its text as written, its content words
    (citations left out) and the documents it cites."""

    text: str
    words: frozenset[str]
    cited: frozenset[str]


_LIST_MARK_RE = re.compile(r"^\s*(?:[-*+\u2022\u2013>#]+|\(?\d{1,3}[.)]|\(?[a-z][.)])\s+", re.I)


def _trimmed_lines(text: str) -> list[str]:
    """The non-empty lines of ``text`` without list marks; over :data:`MAX_SUMMARY_WORDS`
    words, every line keeps the same share of its words (at least one), as LiC trims."""
    lines = [_LIST_MARK_RE.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    counts = [len(line.split()) for line in lines]
    total = sum(counts)
    if total <= MAX_SUMMARY_WORDS:
        return lines
    keep = MAX_SUMMARY_WORDS / total
    return [" ".join(line.split()[: max(1, int(c * keep))]) for line, c in zip(lines, counts)]


def summary_units(summary: str, known: Iterable[str] = ()) -> list[Unit]:
    """The units a summary is graded by (module doc): sentences of its trimmed lines, each
    with its citations (a sentence without any takes those of the next one in its line)."""
    known_keys = frozenset(known)
    units: list[Unit] = []
    for line in _trimmed_lines(visible_text(summary[:MAX_READ_CHARS])):
        parsed: list[tuple[str, frozenset[str], str]] = []
        for sentence in split_sentences(line) or [line]:
            cited, rest = parse_citations(sentence, known_keys)
            if parsed and not any(ch.isalnum() for ch in rest):
                # A citation written after the full stop ("... full. [2]") belongs before it.
                text, before, words = parsed[-1]
                parsed[-1] = (f"{text} {sentence}", before | cited, words)
            else:
                parsed.append((sentence, cited, rest))
        borrowed: frozenset[str] = frozenset()
        line_units: list[Unit] = []
        for text, cited, rest in reversed(parsed):
            borrowed = cited or borrowed
            line_units.append(Unit(text, content_words(rest), cited or borrowed))
        units.extend(reversed(line_units))
        if len(units) >= MAX_UNITS:
            return units[:MAX_UNITS]
    return units


# --------------------------------------------------------------------------------------------
# Verdicts and scores
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """How one insight fares in a summary: its coverage label, the unit that covers it (index
    into the units, None when not covered) and the documents that unit cites."""

    insight_id: str
    coverage: str
    unit: int | None
    cited: frozenset[str]


_SPECIFIC_RE = re.compile(r"(?<![^\s(\[\"'])(?:\d+|[A-Z][^\W_]*)")


def specific_words(text: str) -> frozenset[str]:
    """The stems of an insight's specifics: its numbers and its capitalised words after the
    first word of each sentence (names, places, months), stop words left out."""
    found: set[str] = set()
    for sentence in split_sentences(text):
        for m in _SPECIFIC_RE.finditer(sentence):
            word = m[0].casefold()
            if word.isdigit() or (m.start() > 0 and word not in _STOP_WORDS):
                found.add(_stem(word))
    return frozenset(found) & content_words(text)


def best_unit(insight: str, unit_words: Sequence[frozenset[str]]) -> tuple[str, int | None]:
    """The rule approximation for one insight: its coverage label and the index of the unit
    holding the largest share of its content words (the first such unit; None if uncovered).

    A share of :data:`FULL_COVERAGE_AT` is full coverage and :data:`PARTIAL_COVERAGE_AT`
    partial, with one more condition on the insight's specifics (:func:`specific_words`): a
    unit that lacks some of them covers it at most partially ("riders in Eastbrook" is not
    "riders in Northgate"), and one that has none of them does not cover it."""
    words = content_words(insight)
    if not words or not unit_words:
        return "none", None
    specifics = specific_words(insight)
    shares = [len(words & u) / len(words) for u in unit_words]
    best = max(range(len(shares)), key=lambda i: (shares[i], -i))
    found = len(specifics & unit_words[best])
    if specifics and found == 0:
        return "none", None
    if shares[best] >= FULL_COVERAGE_AT and found == len(specifics):
        return "full", best
    if shares[best] >= PARTIAL_COVERAGE_AT:
        return "partial", best
    return "none", None


def rule_verdicts(hay: Haystack, units: Sequence[Unit]) -> list[Verdict]:
    """The rule approximation's verdict on every insight of the record."""
    unit_words = [u.words for u in units]
    out = []
    for ins in hay.insights:
        label, idx = best_unit(ins.text, unit_words)
        cited = units[idx].cited if idx is not None else frozenset()
        out.append(Verdict(ins.insight_id, label, idx, cited))
    return out


def _f1(cited: frozenset[str], reference: frozenset[str]) -> tuple[float, float, float]:
    hits = len(cited & reference)
    p = hits / len(cited) if cited else 0.0
    r = hits / len(reference) if reference else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def score_verdicts(
    hay: Haystack, verdicts: Sequence[Verdict], grader: str
) -> tuple[float, dict[str, Any]]:
    """The summary's score (mean over insights of coverage x citation F1, LiC's joint score)
    and the detail recorded on the turn: the grader, mean coverage, mean citation F1 /
    precision / recall over the covered insights, and each insight's coverage label."""
    by_id = {v.insight_id: v for v in verdicts}
    joint: list[float] = []
    coverage: list[float] = []
    f1s: list[float] = []
    precisions: list[float] = []
    recalls: list[float] = []
    labels: dict[str, str] = {}
    for ins in hay.insights:
        v = by_id.get(ins.insight_id, Verdict(ins.insight_id, "none", None, frozenset()))
        cov = COVERAGE_SCORES[v.coverage]
        labels[ins.insight_id] = v.coverage
        coverage.append(cov)
        if cov == 0.0:
            joint.append(0.0)
            continue
        p, r, f1 = _f1(v.cited, ins.citations)
        precisions.append(p)
        recalls.append(r)
        f1s.append(f1)
        joint.append(cov * f1)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    score = mean(joint)
    detail: dict[str, Any] = {
        "grader": grader,
        "coverage": round(mean(coverage), 4),
        "citation": round(mean(f1s), 4),
        "citation_precision": round(mean(precisions), 4),
        "citation_recall": round(mean(recalls), 4),
        "insights": labels,
    }
    return max(0.0, min(1.0, score)), detail


# --------------------------------------------------------------------------------------------
# Graders
# --------------------------------------------------------------------------------------------


class SummaryGrader(Protocol):
    """What grades a summary of a haystack: ``(score in [0, 1], detail)``."""

    name: str

    def grade(self, hay: Haystack, summary: str) -> tuple[float, dict[str, Any]]: ...


class RuleSummaryGrader:
    """The offline default: the rule-based approximation of LiC's judge (module doc)."""

    name = "rule-approx"

    def grade(self, hay: Haystack, summary: str) -> tuple[float, dict[str, Any]]:
        units = summary_units(summary, hay.keys)
        return score_verdicts(hay, rule_verdicts(hay, units), self.name)


class _Client(Protocol):
    def complete(self, messages: Any, params: Any, role: str, sample: int = 0) -> Any: ...


def _json_line(obj: Any) -> str:
    """One JSON line for the grader prompt; ``<``, ``>`` and ``&`` escaped so that no text of
    a summary can close or open a block of the prompt."""
    text = json.dumps(obj, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


_COVERAGE_WORDS: dict[str, str] = {
    "full": "full", "fully": "full", "full coverage": "full", "fully covered": "full",
    "covered": "full", "yes": "full", "complete": "full",
    "partial": "partial", "partially": "partial", "partial coverage": "partial",
    "partially covered": "partial",
    "none": "none", "no": "none", "not": "none", "no coverage": "none", "not covered": "none",
    "uncovered": "none", "missing": "none",
}  # fmt: skip


def _coverage_label(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip().casefold().replace("_", " ")
    return _COVERAGE_WORDS.get(text)


def parse_grader_reply(text: str, hay: Haystack, units: Sequence[Unit]) -> list[Verdict] | None:
    """The verdicts of an LLM grader's reply, or None when the reply is unusable (no JSON
    object, or an insight of the record without a coverage label). The cited documents are
    those of the unit the grader names (read by :func:`summary_units`); without a valid unit,
    the ``cited_docs`` it lists."""
    from icpo_eval.prompting import first_json_object

    obj = first_json_object((text or "")[:_MAX_REPLY_CHARS])
    if not isinstance(obj, dict):
        return None
    items = obj.get("insights")
    if isinstance(items, dict):
        items = [{"insight_id": k, **v} for k, v in items.items() if isinstance(v, dict)]
    if not isinstance(items, list):
        return None
    given: dict[str, dict[str, Any]] = {}
    for item in items:
        if isinstance(item, dict) and item.get("insight_id") is not None:
            given.setdefault(str(item["insight_id"]).strip(), item)
    verdicts = []
    for ins in hay.insights:
        item = given.get(ins.insight_id)
        label = _coverage_label(item.get("coverage")) if item else None
        if item is None or label is None:
            return None
        unit = item.get("bullet_id")
        idx = unit - 1 if isinstance(unit, int) and not isinstance(unit, bool) else None
        if idx is not None and not 0 <= idx < len(units):
            idx = None
        if label == "none":
            verdicts.append(Verdict(ins.insight_id, label, None, frozenset()))
            continue
        if idx is not None:
            cited = units[idx].cited
        else:
            listed = item.get("cited_docs")
            listed = listed if isinstance(listed, list) else []
            cited = frozenset(k for x in listed[:100] if (k := doc_key(x)) is not None)
        verdicts.append(Verdict(ins.insight_id, label, idx, cited))
    return verdicts


class LLMSummaryGrader:
    """``llm:MODEL``: coverage of every insight decided by a model (``grader_summary.j2``).

    Greedy, sample 0 first, so the same summary always gets the same call (and the response
    cache answers repeats); an unparsable reply is retried with the next sample ``retries``
    times, then the rule approximation decides. ``client`` replaces the API client (tests).
    """

    def __init__(
        self,
        model: str,
        api: Any = None,
        client: _Client | None = None,
        template: str = "grader_summary.j2",
        retries: int = 2,
        max_tokens: int = 400,
    ):
        if client is None:
            from icpo_eval.models.api import ApiClient

            client = ApiClient(model, api)
        from icpo_eval.judges import prompt_version

        self.model = model
        self.name = f"llm:{model}"
        self.template = template
        self.version = prompt_version(template)
        self.retries = max(0, retries)
        self.max_tokens = max_tokens
        self.client = client
        self.rule = RuleSummaryGrader()

    def prompt(self, hay: Haystack, units: Sequence[Unit]) -> str:
        """The grader's prompt for one summary (already cut into units)."""
        from icpo_eval.prompting import render_prompt

        return render_prompt(
            self.template,
            topic=hay.topic,
            query=hay.query,
            document_ids=_json_line([d.label for d in hay.documents]),
            insight_lines=[
                _json_line(
                    {
                        "insight_id": ins.insight_id,
                        "insight": ins.text,
                        "reference_citations": sorted(ins.citations, key=_key_order),
                    }
                )
                for ins in hay.insights
            ],
            bullet_lines=[
                _json_line({"bullet_id": i + 1, "text": u.text}) for i, u in enumerate(units)
            ],
        )

    def grade(self, hay: Haystack, summary: str) -> tuple[float, dict[str, Any]]:
        from icpo_eval.models.base import GenParams

        units = summary_units(summary, hay.keys)
        if not units:  # nothing to cover anything: no call
            score, detail = score_verdicts(hay, [], self.name)
            return score, {**detail, "grader_version": self.version}
        messages = [{"role": "user", "content": self.prompt(hay, units)}]
        params = GenParams(0.0, 1.0, self.max_tokens)
        for attempt in range(self.retries + 1):
            gen = self.client.complete(messages, params, "grader", attempt)
            verdicts = parse_grader_reply(gen.text, hay, units)
            if verdicts is not None:
                score, detail = score_verdicts(hay, verdicts, self.name)
                return score, {**detail, "grader_version": self.version}
        fallback = f"{self.rule.name} (fallback from {self.name})"
        return score_verdicts(hay, rule_verdicts(hay, units), fallback)


def _key_order(key: str) -> tuple[int, int, str]:
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


_BLOCK_RE = {
    name: re.compile(rf"<{name}>\n?(.*?)\n?</{name}>", re.S)
    for name in ("document_ids", "reference_insights", "summary_to_grade")
}


def _json_lines(text: str) -> list[Any]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def fake_grader_reply(prompt: str) -> str:
    """The test server's deterministic reply to a ``grader_summary.j2`` prompt: for every
    insight listed, the rule approximation's coverage (:func:`best_unit` over the bullets in
    ``<summary_to_grade>``), the bullet it picks and the documents that bullet cites, as the
    grader's JSON. A prompt without the blocks gets an empty list (which the grader retries)."""
    blocks = {name: rx.search(prompt) for name, rx in _BLOCK_RE.items()}
    ids = _json_lines(blocks["document_ids"][1]) if blocks["document_ids"] else []
    known = [doc_key(x) for x in ids[0]] if ids and isinstance(ids[0], list) else []
    insights = _json_lines(blocks["reference_insights"][1]) if blocks["reference_insights"] else []
    bullets = _json_lines(blocks["summary_to_grade"][1]) if blocks["summary_to_grade"] else []
    texts = [str(b.get("text", "")) for b in bullets if isinstance(b, dict)]
    parsed = [parse_citations(t, [k for k in known if k]) for t in texts]
    unit_words = [content_words(rest) for _, rest in parsed]
    out = []
    for ins in insights:
        if not isinstance(ins, dict):
            continue
        label, idx = best_unit(str(ins.get("insight", "")), unit_words)
        cited = sorted(parsed[idx][0], key=_key_order) if idx is not None else []
        out.append(
            {
                "insight_id": ins.get("insight_id"),
                "coverage": label,
                "bullet_id": None if idx is None else idx + 1,
                "cited_docs": cited,
            }
        )
    return json.dumps({"insights": out}, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------------------------


def _question_share(sentences: Sequence[str]) -> float:
    if not sentences:
        return 0.0
    return sum(s.rstrip().endswith("?") for s in sentences) / len(sentences)


@register
class SummaryFamily(Family):
    """Summary of a haystack (LiC): a cited bullet-point summary answering a query; graded by
    coverage of the reference insights and the correctness of their citations."""

    name = "summary"
    answer_shape = (
        "a complete summary of the documents (several points, each citing its documents "
        "when citations are asked for)"
    )
    system_prompt_template = "system_summary.j2"
    answer_by_extraction = True
    #: :func:`icpo_eval.families.summary_make.generate`.
    maker = "icpo_eval.families.summary_make"
    #: LiC's fully specified prompt, then the generated records' whole request.
    full_prompt_fields = ("fully_specified_question", "request")
    #: The system prompt's "(which question to focus on, how to cite the documents, how long
    #: the summary should be)".
    asked_about = (
        "focus",
        "aspect",
        "question",
        "query",
        "cite",
        "citation",
        "citations",
        "format",
        "length",
        "long",
        "words",
        "bullet",
        "bullets",
        "style",
        "document",
        "documents",
        "summary",
        "summarise",
        "summarize",
    )
    #: How summaries are graded; :meth:`with_grader` returns a copy with another one.
    grader: SummaryGrader = RuleSummaryGrader()

    def prompt_variables(self, inst: Instruction) -> dict[str, Any]:
        """The documents (label and text) and the topic, for ``system_summary.j2``; no
        documents when the shards bring them (LiC's records, :meth:`normalise_record`)."""
        hay = haystack(inst)
        shown = [] if inst.fields.get("documents_in_shards") else hay.documents
        return {
            "topic": hay.topic,
            "documents": [{"label": d.label, "text": d.text} for d in shown],
        }

    def normalise_record(self, rec: dict[str, Any], where: str) -> dict[str, Any]:
        """LiC's sharded summary records reveal the documents a batch per turn: each shard
        names its documents by ``doc_idxs`` (positions in ``documents``, 0-based, or their
        ``document_index``) and its own text may be empty. Here those documents are written
        into the shard's text ("Document 3: ..."), after any text it has, and the record is
        marked ``documents_in_shards`` so that the system prompt does not show them all."""
        shards = rec.get("shards")
        if not isinstance(shards, list) or not any(
            isinstance(s, dict) and isinstance(s.get("doc_idxs"), list) for s in shards
        ):
            return rec
        docs = _documents(decode_field(rec.get("documents"), f"{where} documents"), where)
        by_key = {d.key: d for d in docs}
        out = []
        for shard in shards:
            if not isinstance(shard, dict) or not isinstance(shard.get("doc_idxs"), list):
                out.append(shard)
                continue
            named = []
            for idx in shard["doc_idxs"][:MAX_DOCUMENTS]:
                doc = by_key.get(str(idx)) if not isinstance(idx, bool) else None
                if doc is None and isinstance(idx, int) and 0 <= idx < len(docs):
                    doc = docs[idx]
                if doc is None:
                    raise IcpoError(f"{where}: a shard names document {idx!r:.40}, not in it")
                named.append(f"Document {doc.label}:\n{doc.text}")
            text = shard.get("shard") if isinstance(shard.get("shard"), str) else ""
            parts = [text.strip()] if text.strip() else []
            if named:
                parts.append("Here are more documents:\n\n" + "\n\n".join(named))
            rest = {k: v for k, v in shard.items() if k != "doc_idxs"}
            out.append({**rest, "shard": "\n\n".join(parts)})
        return {**rec, "shards": out, "documents_in_shards": True}

    def full_prompt(self, inst: Instruction) -> str:
        """The fully specified request: LiC's or the generated one, else one written from the
        query (the documents are in the system prompt)."""
        for key in self.full_prompt_fields:
            text = inst.fields.get(key)
            if isinstance(text, str) and text.strip():
                return text
        query = inst.fields.get("query")
        if isinstance(query, str) and query.strip():
            topic = inst.fields.get("topic")
            about = f" about {topic.strip()}" if isinstance(topic, str) and topic.strip() else ""
            return (
                f"Summarise what the documents{about} say, answering this question: "
                f"{query.strip()} Write bullet points, one finding per bullet, and after each "
                "point cite its supporting documents by number in square brackets, like [1] "
                "or [2, 3]."
            )
        return super().full_prompt(inst)

    def extract(self, inst: Instruction, response: str) -> str | None:
        """The summary in the reply, or None when the reply is no summary: fewer than
        :data:`MIN_SUMMARY_WORDS` words, or mostly questions. Only the first
        :data:`MAX_READ_CHARS` characters are kept."""
        text = visible_text((response or "")[:MAX_READ_CHARS]).strip()
        body = unwrap_fence(text)
        if body is not None:
            text = body.strip()
        if len(text.split()) < MIN_SUMMARY_WORDS:
            return None
        if _question_share(split_sentences(text)) > 0.5:
            return None
        return text

    def preflight(self, instructions: list[Instruction]) -> list[str]:
        """Decode every record before the run: one IcpoError naming every malformed one."""
        refuse_bad_records(instructions, haystack)
        return []

    def with_grader(self, grader: str, api: Any = None) -> Family:
        """``rule``: this family; ``llm:MODEL``: a copy graded by :class:`LLMSummaryGrader`."""
        name = (grader or "").strip()
        if name == "rule":
            return self
        if name.startswith("llm:") and name[4:].strip():
            fam = copy.copy(self)
            fam.grader = LLMSummaryGrader(name[4:].strip(), api)
            return fam
        raise IcpoError(f"unknown grader {grader!r} (use rule or llm:MODEL)")

    def evaluate(self, inst: Instruction, answer: str | None) -> float:
        return self.grade(inst, answer)[0]

    def grade(self, inst: Instruction, answer: str | None) -> tuple[float, dict[str, Any] | None]:
        """Score in [0, 1] and detail of a summary (module doc); 0.0 without an answer. A
        malformed record raises IcpoError naming its task id."""
        hay = haystack(inst)
        if answer is None or not answer.strip():
            return 0.0, None
        return self.grader.grade(hay, answer)
