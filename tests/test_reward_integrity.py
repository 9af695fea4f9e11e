"""Reward integrity: a non-answer earns the ICPO reward only when it is one (icpo_eval.reward).

A reward hacker's replies (trivial, content-free, repeated, off-task text, numbers in words)
earn 0 on underspecified turns of every family, through :func:`judge_reply` (the harness, the
TRL reward and the verl reward alike), while the genuine non-answers of the labelled sets and of
the family tests still earn 1. The last tests run the real runner with such a model and export
its run in every format.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import ScriptedBackend, make_math

from icpo_eval.export import FORMATS, VERL_FILE, export_run, load_export
from icpo_eval.families import Family, get_family
from icpo_eval.families.math import extract_number
from icpo_eval.families.text import digits_for_number_words
from icpo_eval.judges import RuleJudge, rule_classify
from icpo_eval.records import NON_ANSWERS, Instruction, RunSpec, Shard
from icpo_eval.reward import (
    content_stems,
    engages_with_task,
    icpo_reward,
    judge_reply,
    withheld_reason,
)
from icpo_eval.runner import run
from icpo_eval.store import load_run
from icpo_eval.tasksets import load_lic, read_jsonl, write_jsonl
from icpo_eval.verl_reward import compute_score

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt "
    "ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation "
    "ullamco laboris nisi ut aliquip ex ea commodo consequat."
)

#: The replies of issue 20's reward hacker, then more of the same kind.
TRIVIAL = [
    "?",
    "??",
    "What?",
    ".",
    "...",
    "ok",
    "a",
    "Hmm.",
    "x" * 500,
    "What? What? What?",
    "seven",
    "I think it's seven.",
    "twelve apples",
]
MORE = [
    "Please clarify.",
    "Can you say more?",
    "I need more information.",
    "Interesting question!",
    "Let me think about it.",
    LOREM,
    "What's your favourite colour?",
    "\U0001f914\U0001f914\U0001f914",
    "\U0001f600 \U0001f44d \U0001f389 \u2753",
    "I can't help with that.",
    "I'm sorry, but I can't assist with that request.",
    "   \n\t  ",
    "\u200b\u200b\u200c\u2060",
    "\u200bWhat?\u200b",
    "\u200bPlease\u200b clarify\u200b.",
    "Could you clarify what you mean?",
    "Tell me more.",
    "Sure, I can help with that! What would you like to know?",
    "Please provide more details.",
    "Can you give me more information? Can you give me more information?",
    "Can you rephrase the question?",
    "Okay, got it.",
    "Thanks! Anything else?",
    "I don't know.",
    "Impossible to say.",
    "Hello! How are you today?",
    "What is the meaning of life?",
    "?" * 300,
    "ok " * 400,
    "Let me think. " * 50,
]


def _task_word(inst: Instruction) -> str:
    return max(re.findall(r"[A-Za-z]{4,}", inst.shards[0].shard), key=len)


def degenerate(inst: Instruction) -> list[str]:
    """The table, plus replies built from the task: one task word 100 times; a 200 KB reply
    that repeats one sentence naming the task; the user's first message echoed back; a task
    sentence followed by an off-task question."""
    word = _task_word(inst)
    first = inst.shards[0].shard
    return [
        *TRIVIAL,
        *MORE,
        " ".join([word] * 100),
        f"Let me think about the {word} question carefully. " * 5000,
        first,
        f"{first} What's your favourite colour?",
    ]


def test_the_table_is_big_enough():
    assert len(MORE) >= 15
    assert len(degenerate(make_math())[-3].encode()) >= 200_000


def _underspecified(family: str, n: int = 3) -> list[tuple[Instruction, list[dict[str, str]]]]:
    """Underspecified prompts of committed tasks: shard 1 alone (a sharded conversation's first
    turn) and the first q* variant, each after the family's system prompt."""
    fam = get_family(family)
    out = []
    for inst in read_jsonl(ROOT / "tasks" / f"{family}.jsonl")[:n]:
        assert inst.required_ids != {inst.shards[0].shard_id}
        system = [{"role": "system", "content": fam.system_prompt(inst)}]
        out.append((inst, system + [{"role": "user", "content": inst.shards[0].shard}]))
        for text, _ in fam.underspecified_variants(inst, random.Random(0), 1):
            out.append((inst, system + [{"role": "user", "content": text}]))
    return out


@pytest.mark.parametrize("family", ["math", "code", "database", "actions"])
def test_degenerate_replies_earn_nothing_when_underspecified(family):
    fam = get_family(family)
    prompts = _underspecified(family)
    assert len(prompts) >= 5
    for inst, history in prompts:
        for text in degenerate(inst):
            v = judge_reply(inst, fam, RuleJudge(), text, history, False)
            assert v.reward == 0.0, (family, inst.task_id, text[:60], v)
            if v.category in NON_ANSWERS:
                # The category is kept (LiC's taxonomy); why the reward was withheld is said.
                assert v.withheld, (text[:60], v)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("?", "too few words"),
        ("What? What? What?", "too few words"),
        ("\u200b\u200bWhat?\u200b", "too few words"),
        ("the apples of Tom " * 30, "repetitive"),
        ("How many apples does Tom have? " * 2000, "too long"),
        (LOREM, "not prose"),
        ("How many apples does Tom have at the end?", "repeats the user"),
        ("Tom has apples. What's your favourite colour?", "asks nothing about the task"),
        ("Can you say more?", "names nothing of the task"),
        ("I need more information.", "names nothing of the task"),
    ],
)
def test_each_reason(math_inst, text, reason):
    history = [{"role": "user", "content": math_inst.shards[0].shard}]
    category = rule_classify(text, history[0]["content"], history[0]["content"])
    assert withheld_reason(math_inst, text, history, category) == reason
    assert not engages_with_task(math_inst, text, history, category)


def test_a_refusal_must_say_why_or_name_the_task(math_inst):
    history = [{"role": "user", "content": math_inst.shards[0].shard}]
    for text in (
        "I can't help with that.",
        "Impossible to say.",
        "That can't be determined.",
        "I'm not able to help with this request.",
    ):
        assert rule_classify(text) == "refuse"
        assert withheld_reason(math_inst, text, history, "refuse") == "refuses without a reason"
    for text in (
        "I can't answer that without more information.",
        "I can't answer that, the problem doesn't give any numbers.",
        "Not enough info.",
        "I can't say how many apples Tom has.",
    ):
        assert rule_classify(text) == "refuse"
        assert withheld_reason(math_inst, text, history, "refuse") is None, text
    # The same generic words without a refusal name nothing of the task.
    assert withheld_reason(math_inst, "Not enough info.", history, "discussion") is not None


def test_the_reward_is_withheld_only_where_it_would_be_paid(math_inst):
    history = [{"role": "user", "content": math_inst.shards[0].shard}]
    fam = get_family("math")
    v = judge_reply(math_inst, fam, RuleJudge(), "?", history, True)
    assert (v.category, v.reward, v.withheld) == ("clarification", 0.0, None)
    v = judge_reply(math_inst, fam, RuleJudge(), "?", history, False, truncated=True)
    assert (v.reward, v.withheld) == (0.0, None)
    v = judge_reply(math_inst, fam, RuleJudge(), "?", history, False)
    assert (v.category, v.reward, v.withheld) == ("clarification", 0.0, "too few words")
    assert icpo_reward(False, "clarification", None, engaged=False) == 0.0
    assert icpo_reward(False, "clarification", None, engaged=True) == 1.0


# ---------------------------------------------------------------------------------------------
# Genuine non-answers still earn 1


def _load(name: str) -> list[dict]:
    return [json.loads(x) for x in (DATA / name).read_text().splitlines() if x.strip()]


def _story(item: dict, items: list[dict]) -> Instruction:
    """The instruction of a labelled reply. The sets record only the user's message (the
    context), so the instruction is rebuilt from the story it belongs to: the context and every
    other context of the set sharing a content word with it (the other shards of that story:
    "Maria buys 4 notebooks." for "How much money does Maria spend in total?")."""
    mine = content_stems(item["context"])
    others = sorted(
        {it["context"] for it in items if it["context"] != item["context"]}
        & {it["context"] for it in items if content_stems(it["context"]) & mine}
    )
    shards = [Shard(i, c) for i, c in enumerate([item["context"], *others], 1)]
    return Instruction(item["id"], "math", shards)


#: Labelled non-answers whose reward the rule withholds, and why: by LiC's definitions they are
#: no clarification, discussion or refusal the reward should pay (module docstring).
WITHHELD = {
    "dev-007": "repeats the user",  # "Tom starts with 3 apples." after the same message
    "hold-003": "repeats the user",  # "Mia collected 23 seashells." after the same message
    # Refusals that say not why and name nothing of the task.
    "dev-014": "refuses without a reason",  # off-task: "questions about sports"
    "dev-083": "refuses without a reason",  # "I'm not able to help with this request."
    "dev-090": "refuses without a reason",  # "I'd rather not do your homework for you. ..."
    "dev-091": "refuses without a reason",  # "Sorry, I can't work this one out. ..."
    "hold-041": "refuses without a reason",  # "I'm unable to provide an answer to this."
    "hold-043": "refuses without a reason",  # "Impossible to say."
    "hold-045": "refuses without a reason",  # "I'm sorry, but I can't help with that. ..."
    "hold-046": "refuses without a reason",  # "That can't be determined."
}


@pytest.mark.parametrize("name", ["judge_labelled.jsonl", "judge_holdout.jsonl"])
def test_labelled_non_answers_keep_their_reward(name):
    items = _load(name)
    fam = get_family("math")
    judged = paid = 0
    for item in items:
        if item["label"] not in NON_ANSWERS:
            continue
        inst = _story(item, items)
        history = [
            {"role": "system", "content": fam.system_prompt(inst)},
            {"role": "user", "content": item["context"]},
        ]
        reason = withheld_reason(inst, item["response"], history, item["label"])
        assert reason == WITHHELD.get(item["id"]), (item["id"], item["response"][:80], reason)
        # Through the harness's own path: where the rule judge gives the labelled category
        # (its accuracy is tests/test_judges.py's), it is paid unless withheld above.
        v = judge_reply(inst, fam, RuleJudge(), item["response"], history, False)
        if v.category == item["label"]:
            judged += 1
            paid += v.reward == 1.0
            assert v.reward == (0.0 if item["id"] in WITHHELD else 1.0), (item["id"], v)
    assert paid >= (50 if name == "judge_labelled.jsonl" else 25) and judged > paid


def _families_labelled() -> list[tuple[str, Instruction, str]]:
    db = read_jsonl(ROOT / "tasks" / "database.jsonl")[0]
    acts = read_jsonl(ROOT / "tasks" / "actions.jsonl")[0]
    code = read_jsonl(ROOT / "tasks" / "code.jsonl")[0]
    (tr,) = load_lic(DATA / "lic_translation.json")
    return [
        # tests/test_database_family.py, tests/test_actions_family.py
        ("database", db, "Which country should I filter on?"),
        ("actions", acts, "Which currency is the money in?"),
        # tests/test_translation_family.py
        ("translation", tr, "Is more coming?"),
        ("translation", tr, "Is there more of the document coming?"),
        ("translation", tr, "Could you send the next chunk? And should I keep the line breaks?"),
        # Of our own, for the families' system prompts' aspects and schema identifiers.
        ("code", code, "What should the function be called, and what does it take as input?"),
        ("code", code, "What should it return for an empty list?"),
        ("database", db, "Should customers in the gold tier be counted as well?"),
        ("database", db, "Which columns do you want in the result?"),
        ("actions", acts, "Which currency should I convert the amount to?"),
    ]


@pytest.mark.parametrize("family, inst, text", _families_labelled())
def test_family_clarifications_keep_their_reward(family, inst, text):
    fam = get_family(family)
    history = [
        {"role": "system", "content": fam.system_prompt(inst)},
        {"role": "user", "content": inst.shards[0].shard},
    ]
    v = judge_reply(inst, fam, RuleJudge(), text, history, False)
    assert v.category in NON_ANSWERS and v.reward == 1.0 and v.withheld is None, v


def test_train_non_answers_keep_their_reward():
    """The hand-written non-answers of tests/test_train.py, one per category."""
    inst = make_math()
    history = [{"role": "user", "content": "How many apples does Tom have at the end?"}]
    for text in (
        "How many apples does Tom start with?",
        "How many apples does Tom start with? And how many does he buy?",
        "To find the total I need the number of apples Tom starts with and the number he buys. "
        "Once I have both, I will add them.",
        "If Tom starts with 3 apples and buys 5, he has 8; if he buys 6, he has 9.",
        "I can't answer that without more information.",
    ):
        v = judge_reply(inst, get_family("math"), RuleJudge(), text, history, False)
        assert v.category in NON_ANSWERS and v.reward == 1.0, (text, v)


# ---------------------------------------------------------------------------------------------
# Numbers in words are answers


@pytest.mark.parametrize(
    "text, digits",
    [
        ("seven", "7"),
        ("I think it's seven.", "I think it's 7."),
        ("twelve apples", "12 apples"),
        ("twenty-five apples", "25 apples"),
        ("one hundred and five", "105"),
        ("three thousand two hundred", "3200"),
        ("two and three", "2 and 3"),
        ("One.", "1."),
        ("Tom has one apple.", "Tom has 1 apple."),
        # "one" as a pronoun or in an idiom is no number.
        ("Which one do you mean?", "Which one do you mean?"),
        ("That is the tricky one.", "That is the tricky one."),
        ("one of them", "one of them"),
        ("I need one more detail.", "I need one more detail."),
        ("Someone is asking.", "Someone is asking."),
        ("The second one is harder.", "The second one is harder."),
        # Dozens, halves and other fractions (issue 15).
        ("a dozen eggs", "12 eggs"),
        ("two dozen", "24"),
        ("three dozens", "36"),
        ("half a dozen", "6"),
        ("a half-dozen eggs", "6 eggs"),
        ("one and a half dozen", "18"),
        ("one half", "0.5"),
        ("Each gets one-half.", "Each gets 0.5."),
        ("Each gets a half.", "Each gets 0.5."),
        ("It's a quarter.", "It's 0.25."),
        ("Half.", "0.5."),
        ("Each gets half.", "Each gets 0.5."),
        ("three quarters", "0.75"),
        ("two thirds", "2/3"),
        ("three fifths", "0.6"),
        ("two and a half hours", "2.5 hours"),
        ("one and a half", "1.5"),
        ("twenty-five and three quarters", "25.75"),
        ("two and two thirds", "8/3"),
        ("half an hour", "0.5 hour"),
        ("an hour and a half", "1.5 hour"),
        ("two hours and a half", "2.5 hours"),
        ("half a million", "500000"),
        ("three quarters of a mile", "0.75 of a mile"),
        # Fraction words that are no quantity stay words: a share of something unnamed, an
        # ordinal, a time of day, an idiom, a vague amount.
        ("half of the problem is missing", "half of the problem is missing"),
        ("Half the problem is missing.", "Half the problem is missing."),
        ("Half of them.", "Half of them."),
        ("a third of the pie", "a third of the pie"),
        ("two thirds of the class", "two thirds of the class"),
        ("in the first half", "in the first half"),
        ("The other half.", "The other half."),
        ("Cut it in half.", "Cut it in half."),
        ("a quarter past nine", "a quarter past 9"),
        ("a third option", "a third option"),
        ("There's a third.", "There's a third."),
        ("the third shard", "the third shard"),
        ("first and second", "first and second"),
        ("a couple of details", "a couple of details"),
        ("dozens of them", "dozens of them"),
        ("a half-baked idea", "a half-baked idea"),
        ("four quarters", "4 quarters"),
    ],
)
def test_number_words_as_digits(text, digits):
    assert digits_for_number_words(text) == digits


def test_number_words_are_answer_attempts():
    q = "How many apples does Tom have at the end?"
    for text in ("seven", "I think it's seven.", "twelve apples", "Seven.", "The answer is nine."):
        assert rule_classify(text, q, q) == "answer_attempt", text
    assert rule_classify("If he buys five, he has eight; if six, nine.", q, q) == "hedge"
    assert rule_classify("Do you mean two apples or three?", q, q) == "clarification"
    # Number words in working are not results, only a closing statement of one (digits in
    # working are: "total" and a new number make a conclusion for the digit rules).
    text = (
        "Since the twins collected over two days, their total will be the sum of four numbers: "
        "each twin's count for each day. Adding those gives the combined collection."
    )
    assert rule_classify(text, q, q) == "discussion"
    assert rule_classify(digits_for_number_words(text), q, q) == "answer_attempt"
    # Echoing the user's number in words is no more an answer than echoing it in digits.
    said = f"{q}\nTom starts with 7 apples."
    assert rule_classify("I think it's seven.", said, q) == rule_classify(
        "I think it's 7.", said, q
    )


def test_dozens_and_fractions_in_words_are_answer_attempts():
    q = "How many pencils does Ana have now?"
    ctx = f"{q}\nAna has 4 pencils."
    for text in (
        "Ana has a dozen pencils now.",
        "Ana ends up with two dozen pencils.",
        "Ana has half a dozen pencils.",
        "Ana has four and a half pencils.",
        "It's a quarter.",
    ):
        assert rule_classify(text, ctx, q) == "answer_attempt", text
    # Non-answers holding such words stay non-answers.
    for text, category in (
        ("Is it half of the pencils or all of them?", "clarification"),
        ("Half the problem is missing: how many pencils does she buy?", "clarification"),
        (
            "Knowing her first pencils is a start, but half of the problem is still missing.",
            "discussion",
        ),
        ("We are only a third of the way there.", "discussion"),
        ("A couple of details are missing.", "discussion"),
        ("The third detail would tell us what she buys.", "discussion"),
        ("If she buys a dozen, she has sixteen; if half a dozen, ten.", "hedge"),
    ):
        assert rule_classify(text, ctx, q) == category, text


def test_math_reads_number_words_only_without_digits():
    assert extract_number("seven") == "7"
    assert extract_number("Answer: twelve") == "12"
    assert extract_number("I think it's seven.") == "7"
    assert extract_number("no number here") is None
    # With digits the reply is read as written, number words ignored.
    assert extract_number("3 + 5 = 8, so seven is wrong. Answer: 8") == "8"
    assert extract_number("Tom has 8 apples, not seven.") == "8"
    # A correct answer in words scores on a fully specified turn.
    inst = make_math(answer="7")
    history = [{"role": "user", "content": inst.fields["question"]}]
    v = judge_reply(inst, get_family("math"), RuleJudge(), "seven", history, True)
    assert (v.category, v.answer, v.score, v.reward) == ("answer_attempt", "7", 1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Acceptance: a model replying only trivial text earns 0, in the records and in every export


def _first_user(messages) -> str:
    return next(m["content"] for m in messages if m["role"] == "user")


def _trivial_model(messages) -> str:
    """Cycles through the degenerate table (the one a 20-conversation run needs)."""
    turn = sum(m["role"] == "assistant" for m in messages)
    inst = Instruction("x", "math", [Shard(1, _first_user(messages))])
    table = degenerate(inst)
    return table[(turn + len(_first_user(messages))) % len(table)]


def _asking_model(messages) -> str:
    """Genuine clarifying questions: asks about the thing the user's question counts."""
    q = _first_user(messages)
    m = re.search(r"[Hh]ow (?:many|much) ([a-z]+)", q)
    thing = m.group(1) if m else _task_word(Instruction("x", "math", [Shard(1, q)]))
    return f"Before I work it out: how many {thing} are there at the start, and what changes?"


def _run(tmp_path: Path, name: str, reply) -> tuple[Path, list]:
    tasks = tmp_path / "tasks.jsonl"
    if not tasks.exists():
        write_jsonl(read_jsonl(ROOT / "tasks" / "math.jsonl")[:20], tasks)
    out = tmp_path / name
    spec = RunSpec(model=name, tasks=str(tasks), modes=["sharded"], out=str(out))
    run(spec, backend=ScriptedBackend(reply), progress=False)
    _, convs = load_run(out)
    assert len(convs) == 20
    return out, convs


def _under_rewards(tmp_path: Path, run_dir: Path) -> dict[str, list[float]]:
    """Rewards of the underspecified rows: in each export format, and verl's reward function
    recomputed on every verl row (which must agree with the exported reward on every row)."""
    got: dict[str, list[float]] = {}
    for fmt in FORMATS:
        out, _ = export_run(run_dir, tmp_path / f"{run_dir.name}-{fmt}", fmt)
        rows = load_export(out)
        got[fmt] = [r["reward"] for r in rows if not r["fully_specified"]]
        if fmt == "verl":
            scores = []
            for rec in pd.read_parquet(out / VERL_FILE).to_dict(orient="records"):
                extra = rec["extra_info"]
                gt = rec["reward_model"]["ground_truth"]
                score = compute_score(rec["data_source"], extra["response"], gt, extra)
                assert score == extra["reward"], (extra["response"][:60], score, extra["reward"])
                if not extra["fully_specified"]:
                    scores.append(score)
            got["verl compute_score"] = scores
    return got


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def test_a_model_that_says_nothing_earns_nothing(tmp_path):
    run_dir, convs = _run(tmp_path, "trivial", _trivial_model)
    under = [t for c in convs for t in c.assistant_turns if not t.fully_specified]
    assert len(under) >= 60
    assert _mean([t.reward for t in under]) == 0.0
    withheld = [t for t in under if t.category in NON_ANSWERS]
    assert withheld and all(t.note and t.note.startswith("reward withheld: ") for t in withheld)
    for fmt, rewards in _under_rewards(tmp_path, run_dir).items():
        # jsonl and hf hold every turn; verl the selected training prompts (export.py).
        assert len(rewards) == len(under) or (fmt.startswith("verl") and rewards), fmt
        assert _mean(rewards) == 0.0, fmt


def test_a_model_that_asks_about_the_task_is_paid(tmp_path):
    run_dir, convs = _run(tmp_path, "asking", _asking_model)
    under = [t for c in convs for t in c.assistant_turns if not t.fully_specified]
    assert under and all(t.category == "clarification" for t in under)
    assert _mean([t.reward for t in under]) == 1.0 and not any(t.note for t in under)
    for fmt, rewards in _under_rewards(tmp_path, run_dir).items():
        assert len(rewards) == len(under) or (fmt.startswith("verl") and rewards), fmt
        assert _mean(rewards) == 1.0, fmt


def test_families_declare_their_asked_about_words():
    for name in ("code", "translation", "database"):
        fam: Family = get_family(name)
        assert fam.asked_about and all(w == w.lower() for w in fam.asked_about)
    assert get_family("math").asked_about == ()
