"""The math family: generation is deterministic and well formed, grading is exact and robust."""

from __future__ import annotations

import collections
import re
import time
from fractions import Fraction
from pathlib import Path

import jinja2
import pytest

from icpo_eval.families import get_family
from icpo_eval.families.math import (
    MAX_DIGITS,
    MathFamily,
    answer_tokens,
    answer_value,
    normalize_number,
    reference_answer,
    same_number,
)
from icpo_eval.families.math_make import DEFAULT_LEVEL_MIX, TEMPLATE_NAMES, make_problem
from icpo_eval.records import Instruction, Shard

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def family() -> MathFamily:
    fam = get_family("math")
    assert isinstance(fam, MathFamily)
    return fam


@pytest.fixture(scope="module")
def committed_set(family: MathFamily) -> list[Instruction]:
    """The 200 problems of seed 0, as `icpo-eval tasks generate math --n 200 --seed 0` makes."""
    return family.generate(200, 0)


def _dicts(insts: list[Instruction]) -> list[dict]:
    return [i.to_dict() for i in insts]


def test_registered_with_its_prompt(family: MathFamily) -> None:
    assert family.name == "math"
    text = (ROOT / "prompts" / family.system_prompt_template).read_text()
    rendered = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(text).render()
    assert "Answer: <number>" in rendered
    assert "ask" in rendered.lower()


def test_same_seed_same_problems(family: MathFamily, committed_set: list[Instruction]) -> None:
    assert _dicts(family.generate(200, 0)) == _dicts(committed_set)


def test_different_seeds_differ(family: MathFamily) -> None:
    a, b = family.generate(30, 1), family.generate(30, 2)
    assert [i.fields["question"] for i in a] != [i.fields["question"] for i in b]
    assert a[0].task_id == "math-gen-1-0000" and b[29].task_id == "math-gen-2-0029"


def test_generation_leaves_global_random_alone(family: MathFamily) -> None:
    import random

    random.seed(7)
    expected = random.random()
    random.seed(7)
    family.generate(20, 5)
    assert random.random() == expected


def test_shards_are_well_formed(committed_set: list[Instruction]) -> None:
    for inst in committed_set:
        assert inst.task == "math"
        assert re.fullmatch(r"math-gen-0-\d{4}", inst.task_id)
        ids = [s.shard_id for s in inst.shards]
        assert ids == list(range(1, len(ids) + 1))
        assert inst.shards[0].shard.endswith("?")
        assert not re.search(r"\d", inst.shards[0].shard), inst.shards[0].shard
        required = set(inst.required_shards or [])
        assert 1 in required and required <= set(ids)
        extra = set(ids) - required
        assert len(extra) <= 1  # at most one distractor
        for s in inst.shards[1:]:
            if s.shard_id in required:
                # One quantity per shard, as a complete sentence.
                assert len(re.findall(r"\d+", s.shard)) == 1, s.shard
                assert s.shard[0].isupper() or s.shard[0].isdigit()
                assert s.shard.endswith(".")
        # The full question holds every shard, conditions first, the question last.
        question = inst.fields["question"]
        assert question.endswith(inst.shards[0].shard)
        for s in inst.shards[1:]:
            assert s.shard in question


def test_levels_and_quantities(committed_set: list[Instruction]) -> None:
    for inst in committed_set:
        level = inst.fields["difficulty"]
        n_quantities = len(inst.required_ids) - 1
        assert 1 <= n_quantities <= 6
        assert n_quantities == min(level + 1, 6)
        if level == 1:
            numbers = [int(x) for x in re.findall(r"\d+", inst.fields["question"])]
            assert all(x < 20 for x in numbers) and int(inst.fields["answer"]) < 20
            assert re.fullmatch(r"\d+ [+-] \d+ = \d+\. Answer: \d+", inst.fields["solution"])
            assert len(inst.shards) == 3  # no distractor: level 1 must stay solvable


def test_level_mix_of_committed_set(committed_set: list[Instruction]) -> None:
    counts = collections.Counter(i.fields["difficulty"] for i in committed_set)
    assert set(counts) == set(DEFAULT_LEVEL_MIX) == {1, 2, 3, 4, 5, 6}
    assert 70 <= counts[1] <= 90  # ~40 %
    assert 40 <= counts[2] <= 60  # ~25 %
    assert 22 <= counts[3] <= 38  # ~15 %
    assert 30 <= counts[4] + counts[5] + counts[6] <= 50  # the rest
    # About one problem in three carries a distractor.
    assert sum(len(i.shards) > len(i.required_ids) for i in committed_set) in range(50, 85)


def test_templates_all_used(committed_set: list[Instruction]) -> None:
    assert len(TEMPLATE_NAMES) >= 6
    assert {i.fields["template"] for i in committed_set} == set(TEMPLATE_NAMES)


_STEP = re.compile(r"(\d+) ([+\-×÷]) (\d+) = (\d+)")
_OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "×": lambda a, b: a * b,
    "÷": lambda a, b: a // b if a % b == 0 else None,
}


def test_answer_recomputes_from_solution(committed_set: list[Instruction]) -> None:
    for inst in committed_set:
        steps = _STEP.findall(inst.fields["solution"])
        assert steps, inst.fields["solution"]
        for a, op, b, c in steps:
            assert _OPS[op](int(a), int(b)) == int(c), inst.fields["solution"]
        answer = inst.fields["answer"]
        assert steps[-1][3] == answer and int(answer) >= 0
        # Every number the solution uses comes from the problem or an earlier step.
        known = set(re.findall(r"\d+", inst.fields["question"]))
        for a, _, b, c in steps:
            assert {a, b} <= known, (inst.fields["question"], inst.fields["solution"])
            known.add(c)


def test_reference_scores_one_and_wrong_scores_zero(
    family: MathFamily, committed_set: list[Instruction]
) -> None:
    for inst in committed_set[:50]:
        ref = inst.fields["answer"]
        assert family.evaluate(inst, family.extract(inst, f"So the total is {ref}.")) == 1.0
        assert family.evaluate(inst, str(int(ref) + 1)) == 0.0
        assert family.evaluate(inst, None) == 0.0


def test_make_problem_by_template_and_level() -> None:
    import random

    for name in TEMPLATE_NAMES:
        inst = make_problem(random.Random(3), 5, "t", template=name)
        assert inst.fields["template"] == name and inst.fields["difficulty"] == 5
    with pytest.raises(ValueError):
        make_problem(random.Random(3), 7, "t")


def test_full_prompt(family: MathFamily, committed_set: list[Instruction]) -> None:
    inst = committed_set[0]
    assert family.full_prompt(inst) == inst.fields["question"]
    bare = Instruction("x", "math", [Shard(1, "How many?"), Shard(2, "Tom has 3.")])
    assert family.full_prompt(bare) == "How many? Tom has 3."


def test_round_trip_keeps_fields(committed_set: list[Instruction]) -> None:
    inst = committed_set[0]
    again = Instruction.from_dict(inst.to_dict())
    assert again == inst


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("8", "8"),
        ("$100.00", "100"),
        ("100.00", "100"),
        ("5.00", "5"),
        ("5.0", "5"),
        ("2.50", "2.5"),
        ("1,234.50", "1234.5"),
        ("1,000", "1000"),
        ("-3", "-3"),
        ("-$3", "-3"),
        ("0.5", "0.5"),
        ("-0", "0"),
        ("007", "7"),
        ("10", "10"),
        ("12.", "12"),
        (" 40 ", "40"),
        ("abc", None),
        ("", None),
        ("1.2.3", None),
    ],
)
def test_normalize_number(raw: str, expected: str | None) -> None:
    assert normalize_number(raw) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Tom has 3 + 5 = 8 apples.\nAnswer: 8", "8"),
        ("The answer is $1,200.", "1200"),
        ("I need more information. How many apples does Tom buy?", None),
        ("", None),
        ("He ends with 12.", "12"),
        ("The temperature drops to -3 degrees.", "-3"),
        ("Each friend gets 0.5 of a pie.", "0.5"),
        ("That costs $100.00 in total.", "100"),
        ("Total: 1,234.50", "1234.5"),
        ("8 - 3 = 5", "5"),
        ("**Answer:** 17", "17"),
        ("Answer: 8\nThat took 2 steps.", "8"),  # the marked answer wins over a later remark
        ("Answer: 3 + 5 = 8", "8"),
        ("So she has 9 left.\n#### 9\nThe answer is: 9", "9"),
        ("#### 4\nWait, 2 more come, so 6 in all.", "4"),  # GSM8K's marker counts too
        ("#### 1\nThe answer is: 8", "8"),  # the last marker wins
        ("The answer is 7.\nI used 2 steps.", "7"),
        ("Answer: unknown yet.\nHe has 4 now.", "4"),  # a marker with no number is ignored
        ("There are 4 boxes of H2O", "4"),  # no digits from inside words
        ("Step 1: 3 apples, then x4 more", "3"),  # "x4" is not a number
    ],
)
def test_extract(family: MathFamily, response: str, expected: str | None) -> None:
    inst = Instruction("x", "math", [Shard(1, "q")], fields={"answer": "0"})
    assert family.extract(inst, response) == expected


def test_gsm8k_style_reference(family: MathFamily) -> None:
    inst = Instruction(
        "gsm-1",
        "math",
        [Shard(1, "How much does she earn?")],
        fields={"answer": "She earns 12 * 100 = 1,200 dollars.\n#### 1,200"},
    )
    assert reference_answer(inst) == "1200"
    assert family.evaluate(inst, "1200") == 1.0
    assert family.evaluate(inst, family.extract(inst, "Answer: $1,200.00")) == 1.0
    assert family.evaluate(inst, "120") == 0.0
    # Only the text after the last "####" is the answer.
    twice = Instruction("g", "math", [Shard(1, "q")], fields={"answer": "#### 3\nfixed:\n#### 5"})
    assert reference_answer(twice) == "5"
    words = Instruction("w", "math", [Shard(1, "q")], fields={"answer": "#### 18 apples, not 17"})
    assert reference_answer(words) == "18"
    # LiC integer answers and missing references.
    assert reference_answer(Instruction("a", "math", [Shard(1, "q")], fields={"answer": 18})) == (
        "18"
    )
    assert reference_answer(Instruction("b", "math", [Shard(1, "q")])) is None
    assert family.evaluate(Instruction("b", "math", [Shard(1, "q")]), "18") == 0.0


# --------------------------------------------------------------------------------------------
# Fractions, LaTeX, thousands groups, percentages (the examples first)
# --------------------------------------------------------------------------------------------


def _ref(answer: str) -> Instruction:
    return Instruction("r", "math", [Shard(1, "q")], fields={"answer": answer})


@pytest.mark.parametrize(
    ("response", "reference"),
    [
        ("x = 3/4", "0.75"),
        (r"x = \frac{3}{4}", "0.75"),
        ("The town has 1 234 people.", "1234"),
        ("Answer: -3/4", "-0.75"),
        ("She needs 1 1/2 cups.", "1.5"),
        (r"$\dfrac{3}{4}$", "3/4"),
        (r"$\tfrac{1}{2}$", "0.5"),
        (r"\frac34 of it", "0.75"),
        (r"Answer: $-\frac{3}{4}$", "-3/4"),
        (r"\frac{-3}{4}", "-0.75"),
        (r"It is 2\frac{1}{2} hours.", "2.5"),
        (r"So \boxed{\frac{3}{4}}.", "0.75"),
        (r"First \boxed{5}, no wait: \boxed{7}. (2 checks)", "7"),
        ("1\u2009234 apples", "1234"),
        ("1\u202f234\u202f567 grains", "1234567"),
        ("1 234 567 grains", "1234567"),
        (r"\$1{,}200 in total", "1200"),
        (r"1\,234 m", "1234"),
        ("Answer: 6/8", "3/4"),
        ("12/4 = 3", "3"),
        ("#### 1,200", "#### 1200"),
    ],
)
def test_fractions_latex_and_thousands_score(
    family: MathFamily, response: str, reference: str
) -> None:
    inst = _ref(reference)
    assert family.evaluate(inst, family.extract(inst, response)) == 1.0, family.extract(
        inst, response
    )


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("x = 3/4", "3/4"),  # not 4
        (r"\frac{3}{4}", "3/4"),
        ("1 234", "1234"),  # not 234
        ("3 4", "4"),  # two numbers: "4" is not a group of three digits
        ("Scores: 3 4 5", "5"),
        ("In 2024 100 people came.", "100"),  # "2024" is no 1-3 digit group
        ("3 5/4", "5/4"),  # an improper fraction makes no mixed number
        ("-1 1/2", "-3/2"),
        ("4/2", "2"),
        ("3/4/2024", None),  # a date
        ("1/0", None),
        ("Answer: 10^9", None),  # powers are never evaluated
        ("Answer: 10^{1000000000}", None),
        ("2**10 = ?", None),
        ("1e9", None),
        ("**Answer:** 17", "17"),  # Markdown bold is no power
        ("The total is **8**.", "8"),
        ("45%", "45%"),
        (r"45\%", "45%"),
        ("45 %", "45%"),
        (r"\boxed{3 + 5 = 8} so 9 was wrong", "8"),  # the boxed wins, its last number
        (r"\boxed{no number} Answer: 6", "6"),  # a boxed without a number is ignored
        (r"\boxed{4", "4"),  # not closed: the usual rules
        ("1/2, 3/4", "3/4"),
    ],
)
def test_extract_reads(family: MathFamily, response: str, expected: str | None) -> None:
    assert family.extract(_ref("0"), response) == expected


@pytest.mark.parametrize(
    ("answer", "reference", "same"),
    [
        ("0.75", "3/4", True),
        ("3/4", "0.75", True),
        ("1/3", "0.333", False),
        ("0.333", "1/3", False),
        ("2/3", "0.6666666666666666", False),  # exact, not floats
        ("1 1/2", "1.5", True),
        ("-3/4", "-0.75", True),
        ("-3/4", "0.75", False),
        ("45%", "45", True),  # a "what percent" question's plain-number answer
        ("45%", "0.45", True),  # the same quantity
        ("0.45", "45%", True),
        ("45", "45%", True),
        ("45%", "45%", True),
        ("0.45%", "45%", False),  # two percentages are compared as written
        ("45%", "4.5", False),
        ("100", "100.00", True),
        ("abc", "1", False),
        (None, "1", False),
    ],
)
def test_same_number_is_exact(answer: str | None, reference: str, same: bool) -> None:
    assert same_number(answer, reference) is same


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3/4", "3/4"),
        ("6/8", "3/4"),
        ("-6/8", "-3/4"),
        ("1 1/2", "3/2"),
        (r"\frac{3}{4}", "3/4"),
        (r"\dfrac{10}{4}", "5/2"),
        ("45%", "45%"),
        ("1 234", "1234"),
        ("1\u2009234.50", "1234.5"),
        ("3 4", None),  # two numbers
        ("1/0", None),
        ("+5", "5"),
        (".5", "0.5"),
    ],
)
def test_normalize_fractions_and_groups(raw: str, expected: str | None) -> None:
    assert normalize_number(raw) == expected


def test_answer_tokens_and_values() -> None:
    assert answer_tokens(r"1 1/2 cups, \frac{3}{4} and 45%, then 3 5/4") == [
        "3/2",
        "3/4",
        "45%",
        "3",
        "5/4",
    ]
    assert answer_value("3/4") == (Fraction(3, 4), False)
    assert answer_value("45%") == (Fraction(45), True)
    assert answer_value("-0.125") == (Fraction(-1, 8), False)


def test_fraction_and_latex_references(family: MathFamily) -> None:
    assert reference_answer(_ref(r"#### \frac{3}{4}")) == "3/4"
    assert family.evaluate(_ref("#### 3/4"), "0.75") == 1.0
    assert family.evaluate(_ref("1/3"), "0.333") == 0.0
    assert family.evaluate(_ref("45"), family.extract(_ref("45"), "That is 45%.")) == 1.0


def test_long_numbers_are_exact_and_capped(family: MathFamily) -> None:
    big = "7" * 10_000  # past Python's 4,300-digit int(str) limit, within MAX_DIGITS
    assert MAX_DIGITS >= 10_000
    assert family.extract(_ref(big), f"Answer: {big}") == big
    assert family.evaluate(_ref(big), big) == 1.0
    assert family.evaluate(_ref(big), big[:-1] + "8") == 0.0
    assert same_number(f"{big[1:]}/7", "1" * 9_999) is True  # 777.../7 == 111..., exactly
    assert same_number(f"{big[1:]}/7", "1" * 9_998 + "2") is False
    too_long = "1" * (MAX_DIGITS + 1)
    assert normalize_number(too_long) is None
    assert family.extract(_ref("5"), f"Answer: 5\n{too_long}") == "5"


@pytest.mark.parametrize(
    "reply",
    [
        "The answer is 5 apples. " * 420_000,  # 10 MB
        "1/" * 5_000_000,
        "1/" * 5_000_000 + "1",
        "1" * 10_000_000,
        "Answer: 10^{1000000000}, 1e999999999, 10**10**9",
        "\\frac{" * 10_000 + "1}{2}" + "}{2}" * 9_999,
        "\\boxed{" * 10_000 + "5" + "}" * 10_000,
        "\\boxed{" + "{" * 5_000_000,
        "\\frac{" + " " * 5_000_000,
        "1 " * 3_000_000 + "1/2",
        "1/2 " * 2_500_000,
        "1" + ",234" * 2_000_000 + "5",
        ("9" * 4_999 + "/" + "7" * 4_999 + " ") * 1_000,
    ],
)
def test_hostile_replies_are_read_in_bounded_time(family: MathFamily, reply: str) -> None:
    start = time.monotonic()
    answer = family.extract(_ref("5"), reply)
    family.evaluate(_ref("5"), answer)
    assert time.monotonic() - start < 20


# --------------------------------------------------------------------------------------------
# Numbers in words: dozens, halves, fractions (issue 15)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "reference"),
    [
        ("The answer is two dozen.", "24"),
        ("Each gets one half.", "1/2"),
        ("It takes three and a half hours.", "7/2"),
        ("three and a half hours", "3.5"),
        ("Ana has a dozen pencils.", "12"),
        ("Ken has half a dozen daisies left.", "6"),
        ("Noah is left with one and a half dozen cookies.", "18"),
        ("Answer: three quarters", "3/4"),
        ("Each friend gets two thirds of a pizza.", "2/3"),
        ("It is a quarter.", "0.25"),
        ("Each gets half.", "0.5"),
        ("The trip takes an hour and a half.", "3/2"),
        ("Priya saves twenty-five and three quarters dollars.", "103/4"),
    ],
)
def test_number_words_answers_score(family: MathFamily, response: str, reference: str) -> None:
    inst = _ref(reference)
    answer = family.extract(inst, response)
    assert family.evaluate(inst, answer) == 1.0, answer


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # A reply with digits is read as written: words beside the digits are not answers.
        ("Half of the 24 eggs break, so 12 are left.", "12"),
        ("She has 12 apples, a dozen.", "12"),
        ("Answer: 6 (half a dozen)", "6"),
        ("A third of the 9 plums are ripe: 3.", "3"),
        # Words that are no quantity do not become one.
        ("Half of them are red, so twelve are left.", "12"),
        ("There are twelve left; half of the problem was the boxes.", "12"),
        ("In the first half, Tom has nine apples.", "9"),
        ("The third shard says Tom has four apples.", "4"),
        ("Half the problem is missing.", None),
        ("A couple of details are missing.", None),
        ("a third option", None),
        ("a quarter past", None),
    ],
)
def test_number_words_that_are_no_answer(
    family: MathFamily, response: str, expected: str | None
) -> None:
    assert family.extract(_ref("1"), response) == expected
