"""The translation family (LiC records only): BLEU scoring, extraction, prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from icpo_eval.errors import IcpoError
from icpo_eval.families import get_family
from icpo_eval.families.translation import TranslationFamily, strip_preamble
from icpo_eval.records import Instruction
from icpo_eval.tasksets import load_lic

DATA = Path(__file__).resolve().parent / "data" / "lic_translation.json"


@pytest.fixture(scope="module")
def family() -> TranslationFamily:
    fam = get_family("translation")
    assert isinstance(fam, TranslationFamily)
    return fam


@pytest.fixture(scope="module")
def inst() -> Instruction:
    (record,) = load_lic(DATA)
    return record


def test_lic_record_loads_with_every_shard_required(inst: Instruction) -> None:
    assert inst.task == "translation" and inst.required_shards is None
    assert inst.required_ids == {1, 2, 3}
    # The shards are the document, in order.
    assert "\n".join(s.shard for s in inst.shards) == inst.fields["document_de"]


def test_reference_scores_one_and_wrong_scores_low(
    family: TranslationFamily, inst: Instruction
) -> None:
    reference = inst.fields["document_en"]
    assert family.evaluate(inst, family.extract(inst, reference)) == 1.0
    untranslated = family.evaluate(inst, inst.fields["document_de"])
    assert untranslated < 0.1
    unrelated = "Penguins swim quickly, zebras graze quietly"  # no n-gram in common
    assert family.evaluate(inst, unrelated) == 0.0
    assert family.evaluate(inst, None) == 0.0
    partial = family.evaluate(inst, reference.split("\n")[0])
    assert 0.0 < partial < 0.5  # the first sentence alone: BLEU's brevity penalty
    score, detail = family.grade(inst, reference)
    assert score == 1.0 and detail == {"bleu": 100.0}


def test_preamble_and_fences_are_stripped(family: TranslationFamily, inst: Instruction) -> None:
    reference = inst.fields["document_en"]
    for reply in (
        f"Here is the translation:\n\n{reference}",
        f"Sure! Here's the English version of the document:\n{reference}",
        f"Translation:\n{reference}",
        f"**Translation:** {reference}",
        f"```\n{reference}\n```",
        f'"{reference}"',
    ):
        assert strip_preamble(reply) == reference, reply
        assert family.evaluate(inst, family.extract(inst, reply)) == 1.0
    # A first line that is part of the document is kept.
    assert strip_preamble("Here in Munich, it rains.\nIt is cold.").startswith("Here in Munich")


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "Is there more of the document coming?",
        "Could you send the next chunk? And should I keep the line breaks?",
        "OK.",
    ],
)
def test_questions_to_the_user_are_not_answers(
    family: TranslationFamily, inst: Instruction, reply: str
) -> None:
    assert family.extract(inst, reply) is None


def test_rule_judge(family: TranslationFamily, inst: Instruction) -> None:
    from icpo_eval.judges import RuleJudge

    history = [{"role": "user", "content": inst.shards[0].shard}]
    first = inst.fields["document_en"].split("\n")
    reply = "\n".join(first[:2])
    assert RuleJudge().classify(inst, reply, history) == "answer_attempt"
    assert RuleJudge().classify(inst, "Is more coming?", history) == "clarification"


def test_prompts(family: TranslationFamily, inst: Instruction) -> None:
    assert inst.fields["document_de"] in family.full_prompt(inst)
    assert family.full_prompt(inst).startswith("Translate the following German document")
    system = family.system_prompt(inst)
    assert "entire document" in system and "ask" in system.lower()


def test_missing_reference_raises(family: TranslationFamily) -> None:
    bare = Instruction.from_dict(
        {"task_id": "x", "task": "translation", "shards": [{"shard_id": 1, "shard": "Hallo."}]}
    )
    with pytest.raises(IcpoError, match="document_en"):
        family.evaluate(bare, "Hello.")
