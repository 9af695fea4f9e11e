"""The rule judge against hand-labelled replies, and the ICPO reward.

Labelled sets (tests/data, described in `JUDGE_LABELS.md`): `judge_labelled.jsonl` and
`judge_holdout.jsonl` (replies of the embedded model, math), `judge_strong_dev.jsonl` and
`judge_strong_holdout.jsonl` (replies in the style of strong chat models, four families). Each
pair is a development set (the rules were tuned on it) and a held-out set (written separately
by another author, not looked at while tuning). `judge_strong_variants.jsonl` and
`judge_number_words.jsonl` (math replies stating numbers in words) are development sets too.
Run `pytest -s tests/test_judges.py` to see per-class recall, the confusion matrix and the
reward consequence of the errors.
"""

import hashlib
import json
import time
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

from icpo_eval.families import get_family
from icpo_eval.judges import (
    RULE_JUDGE_VERSION,
    RuleJudge,
    rule_classify,
    states_number_in_words,
)
from icpo_eval.paths import TASKS_DIR
from icpo_eval.records import CATEGORIES, NON_ANSWERS, Instruction
from icpo_eval.reward import icpo_reward
from icpo_eval.tasksets import read_jsonl

DATA = Path(__file__).parent / "data"
STRONG = ["judge_strong_dev.jsonl", "judge_strong_holdout.jsonl", "judge_strong_variants.jsonl"]
#: Math replies that state numbers in words (issue 15), answers and non-answers; in the format
#: of the strong-style sets, written by the rules' author, so a development set.
NUMBER_WORDS = "judge_number_words.jsonl"
CONVERSATION_SETS = [*STRONG, NUMBER_WORDS]
FINGERPRINT = DATA / "judge_rule_fingerprint.json"


def load(name: str) -> list[dict]:
    return [json.loads(x) for x in (DATA / name).read_text().splitlines() if x.strip()]


@cache
def tasks(family: str) -> dict[str, Instruction]:
    return {i.task_id: i for i in read_jsonl(TASKS_DIR / f"{family}.jsonl")}


def conversation(item: dict) -> tuple[Instruction, list[dict], bool]:
    """A strong-style record's instruction, the user turns so far, and whether the turn is
    fully specified."""
    inst = tasks(item["family"])[item["task_id"]]
    text = {s.shard_id: s.shard for s in inst.shards}
    history = [{"role": "user", "content": text[i]} for i in item["revealed"]]
    return inst, history, inst.required_ids <= set(item["revealed"])


def strong_predictions(items: list[dict]) -> list[str]:
    judge = RuleJudge()
    out = []
    for it in items:
        inst, history, _ = conversation(it)
        out.append(judge.decide(inst, get_family(inst.task), it["response"], history).category)
    return out


def scores(items: list[dict], preds: list[str], name: str) -> dict[str, float]:
    """Print per-class recall, the confusion matrix and the reward consequence; return the
    figures (binary and 7-class accuracy, and on underspecified turns the share of non-answers
    judged answers and of answers judged non-answers)."""
    total, right = Counter(), Counter()
    for it, p in zip(items, preds):
        total[it["label"]] += 1
        right[it["label"]] += p == it["label"]
    binary = [
        (it["label"] == "answer_attempt") == (p == "answer_attempt")
        for it, p in zip(items, preds)
        if it["label"] != "missing"
    ]
    out = {"binary": sum(binary) / len(binary), "acc7": sum(right.values()) / len(items)}
    print(
        f"\n{name}: answer-vs-non-answer {out['binary']:.1%} (n={len(binary)}), "
        f"7-class {out['acc7']:.1%} (n={len(items)})"
    )
    for c in CATEGORIES:
        if total[c]:
            print(f"  recall {c:<15} {right[c]:>3}/{total[c]:<3} {right[c] / total[c]:.0%}")
    short = [c[:6] for c in CATEGORIES]
    print("  confusion (rows: label, columns: judged) " + " ".join(f"{c:>6}" for c in short))
    pairs = Counter(zip((it["label"] for it in items), preds))
    for c, sc in zip(CATEGORIES, short):
        if total[c]:
            row = " ".join(f"{pairs[(c, d)]:>6}" for d in CATEGORIES)
            print(f"  {sc:>40} {row}")
    under = [(it, p) for it, p in zip(items, preds) if "fully" in it and not it["fully"]]
    if under:
        non = [p for it, p in under if it["label"] in NON_ANSWERS]
        ans = [p for it, p in under if it["label"] == "answer_attempt"]
        out["non_as_answer"] = sum(p == "answer_attempt" for p in non) / max(1, len(non))
        out["answer_as_non"] = sum(p in NON_ANSWERS for p in ans) / max(1, len(ans))
        print(
            f"  underspecified turns ({len(under)}): non-answers judged answers "
            f"{sum(p == 'answer_attempt' for p in non)}/{len(non)} "
            f"(an asking policy punished), answers judged non-answers "
            f"{sum(p in NON_ANSWERS for p in ans)}/{len(ans)} (a guessing policy rewarded)"
        )
    return out


def strong(name: str) -> tuple[list[dict], list[str]]:
    items = load(name)
    for it in items:
        it["fully"] = conversation(it)[2]
    return items, strong_predictions(items)


def report(name: str, items: list[dict]) -> tuple[float, float]:
    """Score one of the first labelled sets (a context, no family): print per-class recall and
    the confusion matrix, and return (binary accuracy, 7-class accuracy)."""
    preds = [rule_classify(it["response"], it["context"], it["context"]) for it in items]
    got = scores(items, preds, name)
    return got["binary"], got["acc7"]


@pytest.mark.parametrize("name", ["judge_labelled.jsonl", "judge_holdout.jsonl"])
def test_labelled_sets_are_well_formed(name):
    items = load(name)
    counts = Counter(it["label"] for it in items)
    assert set(counts) <= set(CATEGORIES)
    assert len({it["id"] for it in items}) == len(items)
    if name == "judge_labelled.jsonl":
        assert len(items) >= 70
        assert all(counts[c] >= 10 for c in CATEGORIES if c != "missing")


@pytest.mark.parametrize("name", ["judge_labelled.jsonl", "judge_holdout.jsonl"])
def test_rule_judge_separates_answers_from_non_answers(name):
    bin_acc, acc7 = report(name, load(name))
    assert bin_acc >= 0.85
    assert acc7 >= 0.6


@pytest.mark.parametrize("name", CONVERSATION_SETS)
def test_strong_sets_are_well_formed(name):
    items = load(name)
    assert len({it["id"] for it in items}) == len(items)
    for it in items:
        assert it["label"] in CATEGORIES and isinstance(it["response"], str)
        inst = tasks(it["family"])[it["task_id"]]
        assert it["revealed"][0] == 1
        assert set(it["revealed"]) <= {s.shard_id for s in inst.shards}
    if name == NUMBER_WORDS:
        counts = Counter(it["label"] for it in items)
        assert len(items) >= 24 and counts["answer_attempt"] >= 8
        assert sum(counts.values()) - counts["answer_attempt"] >= 8
    elif name != "judge_strong_variants.jsonl":
        counts = Counter((it["family"], it["label"]) for it in items)
        for family in ("math", "code", "database", "actions"):
            for c in CATEGORIES:
                if c != "missing":
                    assert counts[(family, c)] >= 2, (family, c)
        assert sum(not conversation(it)[2] for it in items) >= 0.65 * len(items)


def test_at_least_150_new_strong_style_replies():
    assert sum(len(load(n)) for n in STRONG[:2]) >= 150


#: What the rule judge reaches on each set of strong-style replies (issue 19's targets on the
#: held-out set: answer-vs-non-answer >= 0.93, 7 classes >= 0.85, at most 5% of the
#: non-answers of underspecified turns judged answers).
STRONG_FLOORS = {
    "judge_strong_dev.jsonl": (0.95, 0.95, 0.02),
    "judge_strong_holdout.jsonl": (0.93, 0.85, 0.05),
    "judge_strong_variants.jsonl": (0.95, 0.95, 0.05),
    NUMBER_WORDS: (0.95, 0.9, 0.05),
}


@pytest.mark.parametrize("name", CONVERSATION_SETS)
def test_rule_judge_reads_strong_style_replies(name):
    items, preds = strong(name)
    got = scores(items, preds, name)
    binary, acc7, non_as_answer = STRONG_FLOORS[name]
    assert got["binary"] >= binary and got["acc7"] >= acc7
    assert got["non_as_answer"] <= non_as_answer


def rule_fingerprint() -> str:
    """A hash of the rule judge's category for every labelled reply."""
    cats = [
        rule_classify(it["response"], it["context"], it["context"])
        for name in ("judge_labelled.jsonl", "judge_holdout.jsonl")
        for it in load(name)
    ]
    cats += [p for name in CONVERSATION_SETS for p in strong(name)[1]]
    return hashlib.sha256("\n".join(cats).encode()).hexdigest()


def test_rule_judge_version_changes_with_its_categories():
    """The committed fingerprint names the version that judged the labelled sets so: a change
    of rules that moves any category must come with a new RULE_JUDGE_VERSION (then write the
    new fingerprint: ``python tests/test_judges.py``)."""
    want = json.loads(FINGERPRINT.read_text())
    if want["version"] == RULE_JUDGE_VERSION:
        assert rule_fingerprint() == want["sha256"], (
            "the rule judge's categories changed: bump RULE_JUDGE_VERSION in "
            "icpo_eval/judges.py, then run `python tests/test_judges.py`"
        )
    else:
        pytest.fail(f"{FINGERPRINT.name} is for version {want['version']}: run the script")


#: Lost in Conversation's response-type definitions, point by point (Laban et al. 2025,
#: appendix: "Response strategy categorization"), as the LLM judge's prompt must state them.
LIC_DEFINITIONS = [
    "complete answer attempt",
    "not templated or hypothetical",
    "extracted verbatim",
    "less than 100 words",
    "single question addressed to the user",
    "cannot be long",
    "cannot be a vague question",
    "multiple questions addressed to the user",
    "list or bullet points",
    "without providing a final answer, asking a specific clarification question, or refusing",
    "may or may not contain a vague question",
    "multiple answer candidates",
    "hypotheticals",
    "branching",
    "explicit or implicit refusal",
    "without a follow-up question or a request",
    "the reply is empty",
    "hint at how an answer could look like is not a final answer",
    "only if the conversation could end at this stage",
]


@pytest.mark.parametrize("family", ["math", "code", "database", "actions"])
def test_llm_judge_prompt_follows_the_benchmarks_definitions(family):
    from icpo_eval.judges import LLMJudge

    inst = next(iter(tasks(family).values()))
    fam = get_family(family)
    history = [{"role": "system", "content": "SYSTEM-SECRET"}]
    history += [{"role": "user", "content": inst.shards[0].shard}]
    judge = LLMJudge("openai/unused")
    prompt = " ".join(judge.prompt(inst, fam, "REPLY-UNDER-TEST", history).split())
    for definition in LIC_DEFINITIONS:
        assert definition in prompt, definition
    for c in CATEGORIES:
        assert f"- {c}:" in prompt, c
    # The full specification, every shard, the family's answer shape, the reply; not the
    # assistant's system prompt.
    assert " ".join(fam.full_prompt(inst).split()) in prompt
    assert all(" ".join(s.shard.split()) in prompt for s in inst.shards)
    assert fam.answer_shape in prompt
    assert "REPLY-UNDER-TEST" in prompt and "SYSTEM-SECRET" not in prompt
    assert judge.version.startswith("judge_llm.j2@")


def test_empty_replies_are_missing():
    for text in ("", "   ", "\n\t"):
        assert rule_classify(text) == "missing"


@pytest.mark.parametrize(
    "text, category",
    [
        ("Tom has 3 + 5 = 8 apples.\nAnswer: 8", "answer_attempt"),
        ("How many apples does Tom start with?", "clarification"),
        ("How many does he start with? And how many does he buy?", "interrogation"),
        ("If he buys 5, he has 8; if he buys 6, he has 9.", "hedge"),
        ("I'm sorry, I can't solve this without more information.", "refuse"),
        ("To solve this we add what he starts with to what he buys.", "discussion"),
    ],
)
def test_one_clear_example_per_category(text, category):
    assert rule_classify(text) == category


def test_echoing_the_users_number_for_the_asked_quantity_is_an_answer():
    q = "How many brownies does Noah have now?"
    ctx = f"{q}\nNoah has 10 brownies."
    assert rule_classify("Noah has 10 brownies.", ctx, q) == "answer_attempt"
    assert (
        rule_classify(
            "Lena has $12 in her piggy bank.",
            "Lena has $12.",
            "How much money does Lena have left?",
        )
        == "answer_attempt"
    )
    # Restating a fact about something else is not an answer to the question.
    assert rule_classify("Noah bakes 2 trays.", ctx + "\nNoah bakes 2 trays.", q) == "discussion"
    q = "How many groups are there?"
    said = f"{q}\nThe class has 30 students.\nEach group has 6 students."
    assert rule_classify("Each group has 6 students.", said, q) == "discussion"
    assert rule_classify("There are 6 groups.", said, q) == "answer_attempt"


def test_icpo_reward():
    # Fully specified: the score of an answer; any non-answer or empty reply earns 0.
    assert icpo_reward(True, "answer_attempt", 1.0) == 1.0
    assert icpo_reward(True, "answer_attempt", 0.0) == 0.0
    assert icpo_reward(True, "clarification", None) == 0.0
    # Underspecified: 1 for every non-answer, 0 for a guess (even a lucky one) or nothing.
    for c in NON_ANSWERS:
        assert icpo_reward(False, c, None) == 1.0
    assert icpo_reward(False, "answer_attempt", 1.0) == 0.0
    assert icpo_reward(False, "missing", None) == 0.0
    # A reply cut off by the token limit is never rewarded as a non-answer.
    assert icpo_reward(False, "discussion", None, truncated=True) == 0.0


@pytest.mark.parametrize(
    "text, flagged",
    [
        ("Omar has two marbles.", True),
        ("Omar has a dozen marbles.", True),
        ("Omar has half a dozen marbles.", True),
        ("It takes two and a half hours.", True),
        ("Each gets one half.", True),
        ("Each friend gets three quarters of a pizza.", True),
        ("I think so. Two dollars.", True),
        # A question, a digit, or no quantity in words in the last sentence: not flagged.
        ("Is it half of the apples or all of them?", False),
        ("Omar has 24 marbles, two dozen.", False),
        ("Half of the problem is missing.", False),
        ("The third shard says so.", False),
        ("A couple of details are missing.", False),
        ("Which one is it.", False),
        ("Two marbles were mentioned. Which ones are his.", False),
    ],
)
def test_number_words_audit_reads_what_the_judge_reads(text, flagged):
    assert states_number_in_words(text) is flagged


def test_number_words_audit_is_cheap_on_a_hostile_reply():
    """A 1 MB reply costs linear time: no pattern backtracks past a bounded stretch (the
    generous bound is for a shared machine; a quadratic reading takes minutes)."""
    for reply in (
        "half " * 200_000,
        "one " * 250_000,
        "two dozen and a half " * 50_000,
        "nine hundred " * 80_000,
        "half" + " " * 1_000_000 + "x",
        "a" + " a" * 500_000 + " dozen",
    ):
        start = time.monotonic()
        states_number_in_words(reply)
        assert time.monotonic() - start < 30


if __name__ == "__main__":  # write the fingerprint of the current rule judge
    FINGERPRINT.write_text(
        json.dumps({"version": RULE_JUDGE_VERSION, "sha256": rule_fingerprint()}) + "\n"
    )
    print(f"{FINGERPRINT}: version {RULE_JUDGE_VERSION}")
