"""The data2text family: multi-reference BLEU, extraction, LiC records, generation."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

import icpo_eval.families.data2text  # noqa: F401  (registers the family; see the module doc)
from icpo_eval.cli import main
from icpo_eval.errors import IcpoError
from icpo_eval.families import get_family
from icpo_eval.families.data2text import Data2TextFamily, references, strip_preamble
from icpo_eval.families.data2text_make import DOMAINS
from icpo_eval.judges import RuleJudge
from icpo_eval.records import Instruction
from icpo_eval.tasksets import load_lic, read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "tasks" / "data2text.jsonl"


@pytest.fixture(scope="module")
def family() -> Data2TextFamily:
    fam = get_family("data2text")
    assert isinstance(fam, Data2TextFamily)
    return fam


@pytest.fixture(scope="module")
def committed() -> list[Instruction]:
    return read_jsonl(COMMITTED)


# -- (a) every committed reference scores 1, a wrong description near 0 ---------------------


def test_every_reference_scores_at_the_top(
    family: Data2TextFamily, committed: list[Instruction]
) -> None:
    assert len(committed) == 120
    for inst in committed:
        for ref in references(inst):
            answer = family.extract(inst, ref)
            assert answer == ref, inst.task_id  # a bare description is taken as it is
            score, detail = family.grade(inst, answer)
            assert score >= 0.99 and detail == {"bleu": 100.0}, (inst.task_id, ref)


def test_another_tables_description_scores_near_zero(
    family: Data2TextFamily, committed: list[Instruction]
) -> None:
    """For every instance, the reference of the next instance of another domain (a sentence
    about other facts) scores at most 0.2; one of the same domain, which shares its phrasing
    but not its facts, stays far below the reference's 1."""
    n = len(committed)
    for i, inst in enumerate(committed):
        others = [committed[(i + k) % n] for k in range(1, n)]
        other = next(o for o in others if o.fields["domain"] != inst.fields["domain"])
        assert family.evaluate(inst, references(other)[0]) <= 0.2, inst.task_id
        same = next(o for o in others if o.fields["domain"] == inst.fields["domain"])
        assert family.evaluate(inst, references(same)[0]) <= 0.6, inst.task_id
    assert family.evaluate(committed[0], None) == 0.0
    assert family.grade(committed[0], None) == (0.0, None)


# -- (b) multi-reference BLEU ----------------------------------------------------------------


def _record(**fields: object) -> Instruction:
    shards = [{"shard_id": 1, "shard": "I need a one-sentence description of part of a table."}]
    return Instruction.from_dict(
        {"task_id": "d2t-x", "task": "data2text", "shards": shards, **fields}
    )


def test_bleu_is_taken_against_all_references(family: Data2TextFamily) -> None:
    first = "Anna Berg won the 2014 Lakeview mayoral election with 12,345 votes."
    second = "In the Lakeview mayoral election of 2014, Anna Berg received 12,345 votes."
    both = _record(references=[first, second])
    assert family.evaluate(both, second) == 1.0
    assert family.evaluate(both, first) == 1.0
    # Against the first alone, the second is a paraphrase, not a match.
    assert family.evaluate(_record(references=[first]), second) < 0.5
    # An n-gram from either reference counts: a mix of the two scores above each alone.
    mixed = "In the Lakeview mayoral election of 2014, Anna Berg won with 12,345 votes."
    assert family.evaluate(both, mixed) > family.evaluate(_record(references=[first]), mixed)


# -- (c) LiC records with string-encoded fields ----------------------------------------------


def test_lic_records_with_string_fields_load_and_grade(
    family: Data2TextFamily, tmp_path: Path
) -> None:
    raw_table = [
        [{"value": "Year", "is_header": True}, {"value": "Title", "is_header": True}],
        [{"value": "2009", "is_header": False}, {"value": "Blue Harbor", "is_header": False}],
    ]
    refs = [
        "In 2009, Mira Holt starred in Blue Harbor.",
        "Mira Holt appeared in Blue Harbor in 2009.",
    ]
    record = {
        "task_id": "totto-7",
        "task": "data2text",
        "shards": [
            {"shard_id": 1, "shard": "Write one sentence about part of a table."},
            {"shard_id": 2, "shard": "<table><tr><td>2009</td><td>Blue Harbor</td></tr></table>"},
            {"shard_id": 3, "shard": "The page is Mira Holt, section Filmography."},
        ],
        "table_html": "<table><tr><td>2009</td><td>Blue Harbor</td></tr></table>",
        "table_highlighted_html": "<table><tr><td>2009</td><td>Blue Harbor</td></tr></table>",
        "raw_table": json.dumps(raw_table),
        "references": json.dumps(refs),
        # A Python literal, as LiC's release writes some fields.
        "metadata": str({"page_title": "Mira Holt", "section_title": "Filmography"}),
        "fewshot_descriptions": "Some other table's sentence.",
    }
    path = tmp_path / "lic.json"
    path.write_text(json.dumps([record]), encoding="utf-8")
    (inst,) = load_lic(path)
    assert inst.task == "data2text" and inst.required_ids == {1, 2, 3}
    assert references(inst) == refs
    assert family.grade(inst, family.extract(inst, refs[1])) == (1.0, {"bleu": 100.0})
    assert family.evaluate(inst, "Penguins swim quickly and zebras graze quietly") == 0.0
    prompt = family.full_prompt(inst)
    assert "page_title: Mira Holt" in prompt and "Blue Harbor" in prompt
    assert "Some other table's sentence." in prompt
    # Without HTML, the raw table (itself a string) is rendered, highlights marked.
    raw_table[1][1]["highlighted"] = True
    bare = _record(references=refs, raw_table=json.dumps(raw_table))
    assert '<td class="highlighted">Blue Harbor</td>' in family.full_prompt(bare)
    assert family.preflight([inst, bare]) == []


# -- (d) generation --------------------------------------------------------------------------


def test_generation_is_deterministic_and_leaves_global_random_alone(
    family: Data2TextFamily,
) -> None:
    random.seed(7)
    state = random.getstate()
    a = [i.to_dict() for i in family.generate(30, 3)]
    assert random.getstate() == state
    assert a == [i.to_dict() for i in family.generate(30, 3)]
    assert a != [i.to_dict() for i in family.generate(30, 4)]


def test_committed_set_is_reproduced_byte_for_byte(family: Data2TextFamily, tmp_path: Path) -> None:
    """`icpo-eval tasks generate data2text --n 120 --seed 0 -o tasks/data2text.jsonl`."""
    written = tmp_path / "api.jsonl"
    write_jsonl(family.generate(120, 0), written)
    assert written.read_bytes() == COMMITTED.read_bytes()
    by_cli = tmp_path / "cli.jsonl"
    assert (
        main(["tasks", "generate", "data2text", "--n", "120", "--seed", "0", "-o", str(by_cli)])
        == 0
    )
    assert by_cli.read_bytes() == COMMITTED.read_bytes()
    assert COMMITTED.stat().st_size < 2**20


def test_instances_are_diverse_and_well_formed(committed: list[Instruction]) -> None:
    domains = [i.fields["domain"] for i in committed]
    assert sorted(set(domains)) == sorted(DOMAINS) and all(domains.count(d) == 12 for d in DOMAINS)
    assert len({i.fields["table_html"] for i in committed}) == len(committed)
    assert len({r for i in committed for r in references(i)}) > 2 * len(committed)
    for inst in committed:
        ids = [s.shard_id for s in inst.shards]
        assert ids == list(range(1, len(ids) + 1)) and 4 <= len(ids) <= 6
        assert "sentence" in inst.shards[0].shard and "<table>" not in inst.shards[0].shard
        assert "<table>" in inst.shards[1].shard and "highlighted" not in inst.shards[1].shard
        refs = references(inst)
        assert 1 <= len(refs) <= 3
        # The required shards: intent, table, highlighted cells, context; never the extras.
        required = inst.required_shards or []
        assert len(required) == 4 and {1, 2} <= set(required)
        for s in inst.shards:
            extra = s.shard.startswith(
                ("Here are descriptions", "Write it", "Don't", "Just", "Keep")
            )
            assert (s.shard_id in required) != extra, (inst.task_id, s.shard)
        # Every highlighted cell's value is stated by every reference.
        raw = inst.fields["raw_table"]
        highlighted = [c["value"] for row in raw for c in row if c["highlighted"]]
        assert highlighted
        for ref in refs:
            missing = [v for v in highlighted if not _stated(v, ref)]
            assert not missing, (inst.task_id, ref, missing)


_ORDINALS = (
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
    "tenth", "eleventh", "twelfth",
)  # fmt: skip
_SAID_AS = {"won": ("won", "received"), "nominated": ("nominat",)}


def _stated(value: str, ref: str) -> bool:
    """Whether a reference states a cell's value: as written, or a rank or place in words
    ("5th" as "fifth", rank 1 as "the tallest"), or a result as a verb ("Won" as "received")."""
    text = ref.lower()
    value = value.lower()
    if value in text or any(w in text for w in _SAID_AS.get(value, ())):
        return True
    number = value.rstrip("stndrh")
    if not number.isdigit():
        return False
    n = int(number)
    if n <= len(_ORDINALS) and _ORDINALS[n - 1] in text:
        return True
    return n == 1 and ("tallest" in text or "highest" in text)


# -- (e) extraction refuses non-answers; a hostile reply is quick -----------------------------


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "Which cells are highlighted?",
        "Could you share the table? Once I have it, I'll write the sentence.",
        "Sure, I can write that once you tell me which cells are highlighted.",
        "Okay.",
        "Description",
    ],
)
def test_questions_and_scraps_are_not_answers(
    family: Data2TextFamily, committed: list[Instruction], reply: str
) -> None:
    assert family.extract(committed[0], reply) is None


def test_wrapped_descriptions_are_unwrapped(
    family: Data2TextFamily, committed: list[Instruction]
) -> None:
    inst = committed[0]
    ref = references(inst)[0]
    for reply in (
        f"Here is a one-sentence description:\n\n{ref}",
        f"**Description:** {ref}",
        f"Description:\n{ref}",
        f"```\n{ref}\n```",
        f'"{ref}"',
    ):
        assert strip_preamble(reply) == ref, reply
        assert family.evaluate(inst, family.extract(inst, reply)) == 1.0
    assert strip_preamble('"A" and "B"') == '"A" and "B"'


def test_rule_judge_reads_answers_and_questions(
    family: Data2TextFamily, committed: list[Instruction]
) -> None:
    inst = committed[0]
    history = [{"role": "user", "content": inst.shards[0].shard}]
    judge = RuleJudge()
    assert judge.decide(inst, family, references(inst)[0], history).category == "answer_attempt"
    assert judge.decide(inst, family, "Which cells are highlighted?", history).category == (
        "clarification"
    )
    templated = "[Name] won the [year] election with [votes] votes."
    assert family.answer_problem(inst, templated, templated) == "template"
    assert judge.decide(inst, family, templated, history).category != "answer_attempt"


def test_a_hostile_reply_grades_quickly(
    family: Data2TextFamily, committed: list[Instruction]
) -> None:
    inst = committed[0]
    for reply in (
        "The table lists many facts about it. " * 140_000,  # about 5 MB of prose
        "x" * 5_000_000,
        "```\n" + "a ``` " * 800_000,
        "\u200b" * 5_000_000,
    ):
        start = time.perf_counter()
        score, _ = family.grade(inst, family.extract(inst, reply))
        score_raw, _ = family.grade(inst, reply)  # an unextracted answer is capped too
        assert time.perf_counter() - start < 2.0
        assert 0.0 <= score <= 0.05 and 0.0 <= score_raw <= 0.05


def test_prompts(family: Data2TextFamily, committed: list[Instruction]) -> None:
    inst = committed[0]
    system = family.system_prompt(inst)
    assert "one sentence" in system and "ask" in system.lower()
    prompt = family.full_prompt(inst)
    assert inst.fields["metadata"]["page_title"] in prompt
    assert 'class="highlighted"' in prompt and prompt.startswith("Please write a one-sentence")
    assert family.asked_about and all(w == w.lower() for w in family.asked_about)


# -- (f) a malformed record is one error naming its task -------------------------------------


@pytest.mark.parametrize(
    "refs",
    [
        None,
        "",
        "just one string",
        [1, 2],
        ["ok", 3],
        [],
        ["   "],
        {"a": "b"},
        "[1, 2]",
        "[unclosed",
    ],
)
def test_malformed_references_are_one_error_naming_the_task(
    family: Data2TextFamily, refs: object
) -> None:
    inst = _record(references=refs) if refs is not None else _record()
    with pytest.raises(IcpoError, match="d2t-x") as caught:
        family.grade(inst, "Anna Berg won the election with many votes.")
    assert "\n" not in str(caught.value)
    with pytest.raises(IcpoError, match="d2t-x"):
        family.preflight([inst])


def test_malformed_table_fields_are_one_error_naming_the_task(family: Data2TextFamily) -> None:
    for fields in (
        {"metadata": [1, 2]},
        {"raw_table": "[[1, 2]]"},
        {"raw_table": [["a"]]},
        {"table_highlighted_html": 5},
    ):
        fields = {"table_html": "<table></table>", **fields}
        inst = _record(references=["A sentence of five words."], **fields)
        with pytest.raises(IcpoError, match="d2t-x"):
            family.full_prompt(inst)


# -- a whole run: asking until the task is specified, then answering --------------------------


def test_a_model_that_asks_then_answers_is_paid(
    committed: list[Instruction],
    scripted,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from icpo_eval.records import RunSpec
    from icpo_eval.runner import run
    from icpo_eval.store import read_conversations

    insts = committed[:3]

    def reply(messages):  # type: ignore[no-untyped-def]
        said = "\n".join(m["content"] for m in messages if m["role"] == "user")
        for inst in insts:
            if inst.fields["table_html"] in said or inst.fields["table_highlighted_html"] in said:
                specified = all(inst.shard(i).shard in said for i in inst.required_ids)
                if specified or said.startswith("Please write"):
                    return references(inst)[0]
        return "Which cells of the table are highlighted, and which page is it from?"

    out = tmp_path / "run"
    spec = RunSpec(model="scripted", tasks=str(COMMITTED), limit=3, modes=["full", "sharded"],
                   out=str(out), max_turns=8)  # fmt: skip
    run(spec, backend=scripted(reply), progress=False)
    convs = read_conversations(out / "conversations.jsonl")
    assert len(convs) == 6
    asked = [t for c in convs for t in c.assistant_turns if not t.fully_specified]
    assert asked and all(c.mode == "sharded" for c in convs if not c.turns[1].fully_specified)
    for conv in convs:
        assert conv.error is None and conv.final_score == 1.0, conv.task_id
        for turn in conv.assistant_turns:
            if turn.fully_specified:
                assert turn.category == "answer_attempt" and turn.reward == 1.0
            else:
                assert turn.category == "clarification" and turn.reward == 1.0, turn.note
