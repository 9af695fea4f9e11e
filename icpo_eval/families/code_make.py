"""Making the ``code`` family's tasks: Python functions whose specification arrives in pieces.

Generated problems come from a bank of small templates (count vowels, running maximum, dedupe,
word frequencies ...). Each template has *rule parameters* drawn by seed (ignore case or not,
what to return for an empty list, how ties are broken), and every rule is one shard stated
explicitly in both variants, so that a solution written before the rule was revealed passes only
by luck: the hidden tests include inputs on which the two variants disagree (the family's tests
check this for every committed instance by flipping each rule). Shards:

1. the intent, without details ("count the vowels in a piece of text");
2. the signature (function name and parameters: needed to call it, so required);
3. the input (or output) format: required only where it changes the results;
4. one shard per rule (required);
5. a constraint on sizes (not required: it changes no result).

Hidden tests are calls of the reference implementation on seeded inputs plus fixed edge cases;
the reference source is stored with the instance so the tests can be regenerated and checked.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.records import Instruction, Shard

__all__ = [
    "TEMPLATE_NAMES",
    "generate",
    "make_problem",
    "reference_source",
    "rule_values",
    "run_reference",
]

Params = dict[str, Any]

# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Template:
    """One kind of problem. ``source`` renders the reference with the parameters inlined."""

    key: str
    names: tuple[str, ...]
    args: str  # parameter list as written in the signature
    intent: str
    input_format: str
    format_required: bool  # does the format shard change the expected results?
    constraints: str
    #: rule parameter -> (values it takes, text of the shard for each value)
    rules: dict[str, tuple[tuple[Any, ...], Callable[[Any], str]]]
    source: Callable[[str, Params], str]
    cases: Callable[[random.Random, Params], list[list[Any]]]


def _word(rng: random.Random, alphabet: str, lo: int, hi: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _ints(rng: random.Random, lo: int, hi: int, n_lo: int, n_hi: int) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(n_lo, n_hi))]


_VOCAB = ("apple", "pear", "plum", "fig", "kiwi", "lime", "date", "grape")


def _src_vowels(name: str, p: Params) -> str:
    vowels = "aeiouy" if p["y"] else "aeiou"
    lower = "\n    text = text.lower()" if p["case"] == "ignore" else ""
    return f"def {name}(text):{lower}\n    return sum(1 for ch in text if ch in {vowels!r})\n"


def _cases_vowels(rng: random.Random, p: Params) -> list[list[Any]]:
    fixed = ["", "AEIOU aeiou", "yellow sky", "Python", "rhythm", "Queue OF Ideas"]
    rand = [_word(rng, "abeiouyAEIOUYxz !", 3, 20) for _ in range(5)]
    return [[t] for t in fixed + rand]


def _src_running(name: str, p: Params) -> str:
    empty = "None" if p["empty"] == "none" else "[]"
    start = "0" if p["start"] == "zero" else "None"
    return (
        f"def {name}(nums):\n"
        f"    if not nums:\n"
        f"        return {empty}\n"
        f"    out, best = [], {start}\n"
        f"    for x in nums:\n"
        f"        if best is None or x > best:\n"
        f"            best = x\n"
        f"        out.append(best)\n"
        f"    return out\n"
    )


def _cases_running(rng: random.Random, p: Params) -> list[list[Any]]:
    fixed: list[list[int]] = [[], [-3, -1, -2], [1, 3, 2, 5, 4], [7]]
    rand = [_ints(rng, -20, 20, 1, 10) for _ in range(5)]
    return [[x] for x in fixed + rand]


def _src_dedupe(name: str, p: Params) -> str:
    first = p["keep"] == "first"
    key = "w.lower()" if p["fold"] else "w"
    return (
        f"def {name}(words):\n"
        f"    seq = {'list(words)' if first else 'list(reversed(words))'}\n"
        f"    seen, out = set(), []\n"
        f"    for w in seq:\n"
        f"        key = {key}\n"
        f"        if key not in seen:\n"
        f"            seen.add(key)\n"
        f"            out.append(w)\n"
        f"    return {'out' if first else 'out[::-1]'}\n"
    )


def _cases_dedupe(rng: random.Random, p: Params) -> list[list[Any]]:
    fixed: list[list[str]] = [
        [],
        ["a", "b", "a", "c"],
        ["Apple", "apple", "Banana", "APPLE", "banana"],
        ["x", "y", "x", "y", "z", "x"],
    ]
    rand = [
        [rng.choice(_VOCAB[:4]).upper() if rng.random() < 0.3 else rng.choice(_VOCAB[:4])
         for _ in range(rng.randint(2, 8))]
        for _ in range(5)
    ]  # fmt: skip
    return [[x] for x in fixed + rand]


def _src_clamp(name: str, p: Params) -> str:
    bad = "low, high = high, low" if p["swap"] else "return []"
    none = "out.append(None)\n            " if p["none"] == "keep" else ""
    return (
        f"def {name}(values, low, high):\n"
        f"    if low > high:\n"
        f"        {bad}\n"
        f"    out = []\n"
        f"    for v in values:\n"
        f"        if v is None:\n"
        f"            {none}continue\n"
        f"        out.append(min(max(v, low), high))\n"
        f"    return out\n"
    )


def _cases_clamp(rng: random.Random, p: Params) -> list[list[Any]]:
    fixed: list[list[Any]] = [
        [[1, 5, 10], 2, 8],
        [[None, 3, -4], 0, 2],
        [[4, -2, 9], 5, 1],
        [[], 0, 1],
        [[None], 3, 1],
    ]
    rand = []
    for _ in range(5):
        vals = [None if rng.random() < 0.2 else rng.randint(-10, 10) for _ in range(6)]
        lo, hi = rng.randint(-5, 5), rng.randint(-5, 5)
        rand.append([vals, lo, hi])
    return fixed + rand


def _src_topwords(name: str, p: Params) -> str:
    fold = "\n        w = w.lower()" if p["fold"] else ""
    tie = "w" if p["ties"] == "alpha" else "first[w]"
    return (
        f"def {name}(text, k):\n"
        f"    counts, first = {{}}, {{}}\n"
        f"    for i, raw in enumerate(text.split()):\n"
        f"        w = raw.strip('.,!?;:'){fold}\n"
        f"        if not w:\n"
        f"            continue\n"
        f"        counts[w] = counts.get(w, 0) + 1\n"
        f"        first.setdefault(w, i)\n"
        f"    order = sorted(counts, key=lambda w: (-counts[w], {tie}))\n"
        f"    return [[w, counts[w]] for w in order[:k]]\n"
    )


def _cases_topwords(rng: random.Random, p: Params) -> list[list[Any]]:
    fixed: list[list[Any]] = [
        ["", 3],
        ["pear apple pear apple fig", 2],
        ["The cat. the dog! THE end, cat", 2],
        ["kiwi lime date", 5],
        ["b a c b a c", 2],
    ]
    rand = []
    for _ in range(5):
        words = [rng.choice(_VOCAB) for _ in range(rng.randint(3, 12))]
        words = [w.capitalize() if rng.random() < 0.3 else w for w in words]
        words = [w + rng.choice(",.!") if rng.random() < 0.2 else w for w in words]
        rand.append([" ".join(words), rng.randint(1, 4)])
    return fixed + rand


def _src_second(name: str, p: Params) -> str:
    vals = "set(nums)" if p["distinct"] else "nums"
    missing = "-1" if p["missing"] == "minus_one" else "None"
    return (
        f"def {name}(nums):\n"
        f"    vals = sorted({vals}, reverse=True)\n"
        f"    return vals[1] if len(vals) >= 2 else {missing}\n"
    )


def _cases_second(rng: random.Random, p: Params) -> list[list[Any]]:
    fixed: list[list[int]] = [[], [4], [5, 5, 3], [7, 7], [1, 9, 9, 4]]
    rand = [_ints(rng, -9, 9, 2, 8) for _ in range(5)]
    return [[x] for x in fixed + rand]


def _src_digits(name: str, p: Params) -> str:
    sign = "-1 if n < 0 else 1" if p["negative"] == "negate" else "1"
    loop = "    while s >= 10:\n        s = sum(int(c) for c in str(s))\n" if p["repeat"] else ""
    return (
        f"def {name}(n):\n"
        f"    sign = {sign}\n"
        f"    s = sum(int(c) for c in str(abs(n)))\n"
        f"{loop}"
        f"    return sign * s\n"
    )


def _cases_digits(rng: random.Random, p: Params) -> list[list[Any]]:
    fixed = [0, 7, 99, -99, 12345, -5]
    rand = [rng.randint(-99999, 99999) for _ in range(5)]
    return [[x] for x in fixed + rand]


def _src_palindrome(name: str, p: Params) -> str:
    chars = "[c for c in text if c.isalnum()]" if p["alnum"] else "list(text)"
    fold = "\n    chars = [c.lower() for c in chars]" if p["fold"] else ""
    return f"def {name}(text):\n    chars = {chars}{fold}\n    return chars == chars[::-1]\n"


def _cases_palindrome(rng: random.Random, p: Params) -> list[list[Any]]:
    fixed = ["", "Racecar", "A man, a plan, a canal: Panama", "xy, yx!", "abba", "abc", "Ab, bA"]
    rand = []
    for _ in range(4):
        half = _word(rng, "abcAB", 1, 4)
        mid = rng.choice(["", " ", ",", "x"])
        rand.append(half + mid + (half[::-1].swapcase() if rng.random() < 0.5 else half[::-1]))
    return [[t] for t in fixed + rand]


def _src_chunk(name: str, p: Params) -> str:
    bad = "[]" if p["bad_size"] == "empty" else "[list(items)]"
    drop = "\n    if out and len(out[-1]) < size:\n        out.pop()" if p["tail"] == "drop" else ""
    return (
        f"def {name}(items, size):\n"
        f"    if size <= 0:\n"
        f"        return {bad}\n"
        f"    out = [list(items[i:i + size]) for i in range(0, len(items), size)]{drop}\n"
        f"    return out\n"
    )


def _cases_chunk(rng: random.Random, p: Params) -> list[list[Any]]:
    fixed: list[list[Any]] = [
        [[1, 2, 3, 4, 5, 6, 7], 3],
        [[1, 2, 3, 4, 5, 6], 3],
        [[1, 2], 0],
        [[1, 2, 3], -1],
        [[], 2],
    ]
    rand = [[_ints(rng, 0, 9, 0, 9), rng.randint(1, 4)] for _ in range(5)]
    return fixed + rand


def _src_fizz(name: str, p: Params) -> str:
    a, b, w1, w2 = p["a"], p["b"], p["w1"], p["w2"]
    return (
        f"def {name}(n):\n"
        f"    out = []\n"
        f"    for i in range(1, n + 1):\n"
        f"        s = ({w1!r} if i % {a} == 0 else '') + ({w2!r} if i % {b} == 0 else '')\n"
        f"        out.append(s or str(i))\n"
        f"    return out\n"
    )


def _cases_fizz(rng: random.Random, p: Params) -> list[list[Any]]:
    fixed = [0, 1, p["a"] * p["b"], 2 * p["a"] * p["b"] + 1]
    rand = [rng.randint(2, 40) for _ in range(4)]
    return [[x] for x in fixed + rand]


def _src_rle(name: str, p: Params) -> str:
    count = "'' if n == 1 else str(n)" if p["singles"] == "bare" else "str(n)"
    piece = "text[i] + cnt" if p["order"] == "char_first" else "cnt + text[i]"
    return (
        f"def {name}(text):\n"
        f"    out, i = [], 0\n"
        f"    while i < len(text):\n"
        f"        j = i\n"
        f"        while j < len(text) and text[j] == text[i]:\n"
        f"            j += 1\n"
        f"        n = j - i\n"
        f"        cnt = {count}\n"
        f"        out.append({piece})\n"
        f"        i = j\n"
        f"    return ''.join(out)\n"
    )


def _cases_rle(rng: random.Random, p: Params) -> list[list[Any]]:
    fixed = ["", "a", "aaabcc", "abc", "zzzzzzzzzzzz"]
    rand = ["".join(rng.choice("ab") * rng.randint(1, 4) for _ in range(4)) for _ in range(5)]
    return [[t] for t in fixed + rand]


def _src_median(name: str, p: Params) -> str:
    empty = "0" if p["empty"] == "zero" else "None"
    even = "(s[m - 1] + s[m]) / 2" if p["even"] == "mean" else "s[m - 1]"
    return (
        f"def {name}(nums):\n"
        f"    if not nums:\n"
        f"        return {empty}\n"
        f"    s = sorted(nums)\n"
        f"    m = len(s) // 2\n"
        f"    return s[m] if len(s) % 2 else {even}\n"
    )


def _cases_median(rng: random.Random, p: Params) -> list[list[Any]]:
    fixed: list[list[int]] = [[], [5], [1, 2, 3, 4], [9, 1, 5], [2, 2, 8, 10]]
    rand = [_ints(rng, -20, 20, 1, 8) for _ in range(5)]
    return [[x] for x in fixed + rand]


def _yes_no(yes: str, no: str) -> Callable[[Any], str]:
    return lambda v: yes if v else no


def _by(texts: dict[Any, str]) -> Callable[[Any], str]:
    return lambda v: texts[v]


_TEMPLATES: tuple[_Template, ...] = (
    _Template(
        key="vowels",
        names=("count_vowels", "vowel_count"),
        args="text",
        intent="I need a Python function that counts the vowels in a piece of text.",
        input_format="The input is a single string that may mix letters, digits, spaces and "
        "punctuation.",
        format_required=False,
        constraints="The text is at most 1000 characters long.",
        rules={
            "case": (
                ("ignore", "lower"),
                _by(
                    {
                        "ignore": "Uppercase vowels count too: letter case does not matter.",
                        "lower": "Only lowercase vowels count; uppercase letters never count.",
                    }
                ),
            ),
            "y": (
                (True, False),
                _yes_no("The letter y counts as a vowel too.", "The letter y is not a vowel."),
            ),
        },
        source=_src_vowels,
        cases=_cases_vowels,
    ),
    _Template(
        key="running_max",
        names=("running_max", "prefix_maxima"),
        args="nums",
        intent="Write me a Python function that computes the running maximum of a list of "
        "numbers: one value per position.",
        input_format="The input is a list of integers, possibly negative.",
        format_required=False,
        constraints="The list holds at most 10,000 numbers.",
        rules={
            "start": (
                ("zero", "first"),
                _by(
                    {
                        "zero": "The running maximum starts at 0, so leading negative numbers "
                        "give 0.",
                        "first": "The running maximum starts from the first element, even when "
                        "it is negative.",
                    }
                ),
            ),
            "empty": (
                ("none", "list"),
                _by(
                    {
                        "none": "For an empty list, return None.",
                        "list": "For an empty list, return an empty list.",
                    }
                ),
            ),
        },
        source=_src_running,
        cases=_cases_running,
    ),
    _Template(
        key="dedupe",
        names=("dedupe", "unique_words"),
        args="words",
        intent="I want a Python function that removes repeated words from a list.",
        input_format="The input is a list of strings.",
        format_required=False,
        constraints="The list holds at most 5,000 words.",
        rules={
            "keep": (
                ("first", "last"),
                _by(
                    {
                        "first": "When a word repeats, keep its first occurrence, in that "
                        "position.",
                        "last": "When a word repeats, keep its last occurrence: words are ordered "
                        "by where they last appear.",
                    }
                ),
            ),
            "fold": (
                (True, False),
                _yes_no(
                    "Words that differ only in letter case are the same word (keep the "
                    "spelling of the occurrence you keep).",
                    "Comparison is case-sensitive: 'Apple' and 'apple' are different words.",
                ),
            ),
        },
        source=_src_dedupe,
        cases=_cases_dedupe,
    ),
    _Template(
        key="clamp",
        names=("clamp_all", "clip_values"),
        args="values, low, high",
        intent="I need a Python function that clamps every value of a list into a range.",
        input_format="values is a list whose entries are integers or None; low and high are "
        "integers.",
        format_required=False,
        constraints="The list holds at most 10,000 entries.",
        rules={
            "swap": (
                (True, False),
                _yes_no(
                    "If low is greater than high, swap them.",
                    "If low is greater than high, return an empty list.",
                ),
            ),
            "none": (
                ("keep", "drop"),
                _by(
                    {
                        "keep": "None entries stay None, in place.",
                        "drop": "None entries are removed from the result.",
                    }
                ),
            ),
        },
        source=_src_clamp,
        cases=_cases_clamp,
    ),
    _Template(
        key="top_words",
        names=("top_words", "most_common_words"),
        args="text, k",
        intent="Write a Python function that finds the most frequent words in a text.",
        input_format="Words are separated by whitespace; the punctuation marks . , ! ? ; : at "
        "either end of a word are not part of it. Return a list of [word, count] pairs, most "
        "frequent first, at most k of them.",
        format_required=True,
        constraints="The text is at most 100,000 characters long.",
        rules={
            "ties": (
                ("alpha", "first"),
                _by(
                    {
                        "alpha": "Words with the same count are ordered alphabetically.",
                        "first": "Words with the same count are ordered by their first appearance "
                        "in the text.",
                    }
                ),
            ),
            "fold": (
                (True, False),
                _yes_no(
                    "Ignore letter case: count 'The' and 'the' as one word, written in lowercase.",
                    "Letter case matters: 'The' and 'the' are different words.",
                ),
            ),
        },
        source=_src_topwords,
        cases=_cases_topwords,
    ),
    _Template(
        key="second_largest",
        names=("second_largest", "runner_up"),
        args="nums",
        intent="I need a Python function that returns the second largest number of a list.",
        input_format="The input is a list of integers.",
        format_required=False,
        constraints="The list holds at most 100,000 numbers.",
        rules={
            "distinct": (
                (True, False),
                _yes_no(
                    "Duplicates count once: in [5, 5, 3] the answer is 3.",
                    "Duplicates count separately: in [5, 5, 3] the answer is 5.",
                ),
            ),
            "missing": (
                ("minus_one", "none"),
                _by(
                    {
                        "minus_one": "If there is no second largest value, return -1.",
                        "none": "If there is no second largest value, return None.",
                    }
                ),
            ),
        },
        source=_src_second,
        cases=_cases_second,
    ),
    _Template(
        key="digit_sum",
        names=("digit_sum", "sum_of_digits"),
        args="n",
        intent="Write a Python function that adds up the digits of a whole number.",
        input_format="The input is an int.",
        format_required=False,
        constraints="|n| is below 10**18.",
        rules={
            "repeat": (
                (True, False),
                _yes_no(
                    "Repeat the summing until a single digit remains (99 -> 18 -> 9).",
                    "Sum the digits once only (99 -> 18).",
                ),
            ),
            "negative": (
                ("abs", "negate"),
                _by(
                    {
                        "abs": "For a negative number, use its absolute value (-12 -> 3).",
                        "negate": "For a negative number, return the negated result (-12 -> -3).",
                    }
                ),
            ),
        },
        source=_src_digits,
        cases=_cases_digits,
    ),
    _Template(
        key="palindrome",
        names=("is_palindrome", "reads_same_backwards"),
        args="text",
        intent="I need a Python function that tells whether a text is a palindrome.",
        input_format="The input is a string; return True or False.",
        format_required=False,
        constraints="The text is at most 10,000 characters long.",
        rules={
            "alnum": (
                (True, False),
                _yes_no(
                    "Ignore every character that is not a letter or a digit.",
                    "Every character counts, spaces and punctuation included.",
                ),
            ),
            "fold": (
                (True, False),
                _yes_no("Ignore letter case.", "Letter case matters: 'A' and 'a' differ."),
            ),
        },
        source=_src_palindrome,
        cases=_cases_palindrome,
    ),
    _Template(
        key="chunk",
        names=("chunk", "split_into_chunks"),
        args="items, size",
        intent="Write a Python function that splits a list into consecutive chunks.",
        input_format="items is a list; size is an int; return a list of lists.",
        format_required=False,
        constraints="The list holds at most 10,000 items.",
        rules={
            "tail": (
                ("keep", "drop"),
                _by(
                    {
                        "keep": "If the last chunk is shorter than size, keep it.",
                        "drop": "If the last chunk is shorter than size, drop it.",
                    }
                ),
            ),
            "bad_size": (
                ("empty", "whole"),
                _by(
                    {
                        "empty": "If size is 0 or negative, return an empty list.",
                        "whole": "If size is 0 or negative, return the whole list as one chunk.",
                    }
                ),
            ),
        },
        source=_src_chunk,
        cases=_cases_chunk,
    ),
    _Template(
        key="fizz",
        names=("word_game", "fizz_list"),
        args="n",
        intent="I need a Python function for a counting game: list the numbers from 1 to n, "
        "with some numbers replaced by words.",
        input_format="Return a list of strings; a number that is not replaced appears as its "
        "decimal text ('7').",
        format_required=True,
        constraints="n is at most 10,000; for n below 1 the list is empty.",
        rules={
            "a": ((), lambda v: ""),  # texts built in make_problem (they hold two parameters)
            "b": ((), lambda v: ""),
        },
        source=_src_fizz,
        cases=_cases_fizz,
    ),
    _Template(
        key="rle",
        names=("compress", "run_length_encode"),
        args="text",
        intent="Write a Python function that compresses a string with run-length encoding.",
        input_format="The input is a string of letters; return a string.",
        format_required=False,
        constraints="The text is at most 100,000 characters long.",
        rules={
            "order": (
                ("char_first", "count_first"),
                _by(
                    {
                        "char_first": "Write each run as the character followed by the run length "
                        "('aaa' -> 'a3').",
                        "count_first": "Write each run as the run length followed by the character "
                        "('aaa' -> '3a').",
                    }
                ),
            ),
            "singles": (
                ("count", "bare"),
                _by(
                    {
                        "count": "A run of length 1 also gets its count written out.",
                        "bare": "A run of length 1 is written as the bare character, without a "
                        "count.",
                    }
                ),
            ),
        },
        source=_src_rle,
        cases=_cases_rle,
    ),
    _Template(
        key="median",
        names=("median", "middle_value"),
        args="nums",
        intent="I need a Python function that returns the median of a list of numbers.",
        input_format="The input is a list of integers, in any order.",
        format_required=False,
        constraints="The list holds at most 100,000 numbers.",
        rules={
            "even": (
                ("mean", "lower"),
                _by(
                    {
                        "mean": "For an even number of values, return the mean of the two middle "
                        "values (a float).",
                        "lower": "For an even number of values, return the lower of the two middle "
                        "values.",
                    }
                ),
            ),
            "empty": (
                ("zero", "none"),
                _by(
                    {
                        "zero": "For an empty list, return 0.",
                        "none": "For an empty list, return None.",
                    }
                ),
            ),
        },
        source=_src_median,
        cases=_cases_median,
    ),
)
_TEMPLATES_BY_KEY = {t.key: t for t in _TEMPLATES}
TEMPLATE_NAMES: tuple[str, ...] = tuple(t.key for t in _TEMPLATES)

_FIZZ_WORDS = (("Fizz", "Buzz"), ("Ping", "Pong"), ("Tick", "Tock"), ("Foo", "Bar"))


def _draw_params(rng: random.Random, tpl: _Template) -> Params:
    if tpl.key == "fizz":
        a, b = rng.sample(range(2, 8), 2)
        w1, w2 = rng.choice(_FIZZ_WORDS)
        return {"a": a, "b": b, "w1": w1, "w2": w2}
    return {k: rng.choice(values) for k, (values, _) in tpl.rules.items()}


def _rule_texts(tpl: _Template, p: Params) -> list[str]:
    if tpl.key == "fizz":
        w1, w2 = p["w1"], p["w2"]
        return [
            f"Numbers divisible by {p['a']} become '{w1}'.",
            f"Numbers divisible by {p['b']} become '{w2}'; numbers divisible by both become "
            f"'{w1}{w2}'.",
        ]
    return [text(p[k]) for k, (_, text) in tpl.rules.items()]


def reference_source(template: str, name: str, params: Params) -> str:
    """Source of the reference implementation of a template with these rule parameters."""
    try:
        return _TEMPLATES_BY_KEY[template].source(name, params)
    except KeyError as e:
        raise IcpoError(f"code template {template!r} or its parameter {e} is unknown") from None


def run_reference(source: str, name: str, args: list[Any]) -> Any:
    """Call a reference implementation in this process (it is our own code, not a model's)."""
    ns: dict[str, Any] = {}
    exec(compile(source, f"<reference {name}>", "exec"), ns)
    return ns[name](*copy.deepcopy(args))


def make_problem(rng: random.Random, task_id: str, template: str | None = None) -> Instruction:
    """One problem drawn with ``rng`` only (a random template unless one is named)."""
    tpl = _TEMPLATES_BY_KEY[template] if template else rng.choice(_TEMPLATES)
    name = rng.choice(tpl.names)
    params = _draw_params(rng, tpl)
    source = tpl.source(name, params)
    tests = [
        {"input": args, "output": run_reference(source, name, args)}
        for args in tpl.cases(rng, params)
    ]
    rules = _rule_texts(tpl, params)
    rng.shuffle(rules)
    texts = [
        (tpl.intent, True),
        (f"The function should be called `{name}({tpl.args})`.", True),
        (tpl.input_format, tpl.format_required),
        *((r, True) for r in rules),
        (tpl.constraints, False),
    ]
    shards = [Shard(i + 1, t) for i, (t, _) in enumerate(texts)]
    required = [i + 1 for i, (_, req) in enumerate(texts) if req]
    return Instruction(
        task_id=task_id,
        task="code",
        shards=shards,
        required_shards=required,
        fields={
            "func_name": name,
            "signature": f"def {name}({tpl.args})",
            "template": tpl.key,
            "params": params,
            "reference": source,
            "tests": tests,
        },
    )


def rule_values(template: str, rule: str) -> tuple[Any, ...]:
    """The values a template's rule parameter takes (each has its own shard text)."""
    return _TEMPLATES_BY_KEY[template].rules[rule][0]


def generate(n: int, seed: int) -> list[Instruction]:
    """``n`` problems from ``random.Random(seed)``, templates in a shuffled round robin so that
    every template is represented about equally."""
    if n < 0:
        raise IcpoError("n must be >= 0")
    rng = random.Random(seed)
    plan: list[str] = []
    while len(plan) < n:
        keys = list(TEMPLATE_NAMES)
        rng.shuffle(keys)
        plan.extend(keys)
    return [make_problem(rng, f"code-gen-{seed}-{i:04d}", t) for i, t in enumerate(plan[:n])]
