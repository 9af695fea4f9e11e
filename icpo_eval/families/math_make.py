"""Making the ``math`` family's tasks: multi-step arithmetic word problems.

Why generated problems rather than only GSM8K: a generator gives us as many instances as we want,
a known ``difficulty`` per instance (so degradation can be read per level), and an exact split
between the shards that are *required* and an optional distractor. That split is what lets the
ICPO reward tell an underspecified turn from a fully specified one.

Each problem is a short story over one running quantity (apples in a bag, miles left to drive,
dollars saved ...). A story is a *recipe* of operations, and every operation contributes one or
two sentences, each carrying exactly one number:

* ``start``  ``Tom has 3 apples.``                          (1 quantity)
* ``gstart`` ``Tom buys 4 bags.`` ``Each bag holds 6.``     (2 quantities, one ×)
* ``add``/``sub`` ``He buys 5 more.`` / ``He gives 2 away.`` (1 quantity, one + or -)
* ``gadd``/``gsub`` ``He buys 2 boxes.`` ``Each holds 5.``  (2 quantities, one × and one + or -)
* ``div``    ``He shares them equally among 3 friends.``   (1 quantity, one ÷, changes the question)

Shard 1 is the question, without any number; then one shard per sentence. Level 1 is one
addition or subtraction of numbers below 20, with no distractor: SmolLM2-135M-Instruct (the
embedded model, greedy) solved 11 of 48 of those and 0 of 16 level-2 problems, so anything harder
would leave the small model's scores at zero and the metrics uninformative.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from icpo_eval.records import Instruction, Shard

__all__ = ["DEFAULT_LEVEL_MIX", "TEMPLATE_NAMES", "generate", "make_problem"]

#: Share of each difficulty level in a generated set. Weighted toward easy problems so that a
#: 135M model scores above zero on a useful part of the set (see the module docstring).
DEFAULT_LEVEL_MIX: dict[int, float] = {1: 0.40, 2: 0.25, 3: 0.15, 4: 0.08, 5: 0.07, 6: 0.05}

_Range = tuple[int, int]


@dataclass(frozen=True)
class _Level:
    """How one difficulty level is built: which recipes, and how big the numbers get."""

    #: Recipes; "pm" becomes "add" or "sub", "gpm" becomes "gadd" or "gsub".
    recipes: tuple[tuple[str, ...], ...]
    start: _Range  # the first quantity of a "start"
    step: _Range  # the amount of an add/sub
    count: _Range  # number of groups (gstart/gadd/gsub)
    size: _Range  # size of each group
    divisor: _Range
    max_result: int  # every intermediate total and the answer stay at or below this


_LEVELS: dict[int, _Level] = {
    # One addition or subtraction, everything below 20.
    1: _Level(
        recipes=(("start", "pm"),),
        start=(2, 12),
        step=(2, 9),
        count=(2, 2),
        size=(2, 2),
        divisor=(2, 2),
        max_result=19,
    ),
    # Two additions/subtractions, 3 quantities.
    2: _Level(
        recipes=(("start", "pm", "pm"),),
        start=(5, 25),
        step=(2, 15),
        count=(2, 2),
        size=(2, 2),
        divisor=(2, 2),
        max_result=60,
    ),
    # One multiplication plus additions/subtractions, 4 quantities.
    3: _Level(
        recipes=(("gstart", "pm", "pm"), ("start", "gpm", "pm"), ("start", "pm", "gpm")),
        start=(5, 30),
        step=(2, 20),
        count=(2, 6),
        size=(2, 10),
        divisor=(2, 2),
        max_result=150,
    ),
    # Multiplication with division, or two multiplications, 5 quantities.
    4: _Level(
        recipes=(
            ("gstart", "pm", "pm", "div"),
            ("start", "gpm", "pm", "div"),
            ("gstart", "gpm", "pm"),
        ),
        start=(10, 40),
        step=(2, 25),
        count=(2, 8),
        size=(3, 12),
        divisor=(2, 6),
        max_result=250,
    ),
    # ×, ÷, + and -, 6 quantities.
    5: _Level(
        recipes=(("gstart", "gpm", "pm", "div"), ("gstart", "pm", "pm", "pm", "div")),
        start=(10, 50),
        step=(2, 30),
        count=(2, 8),
        size=(3, 15),
        divisor=(2, 8),
        max_result=400,
    ),
    # 6 quantities with larger numbers: ×, ÷, + and -, or three multiplications.
    6: _Level(
        recipes=(("gstart", "gpm", "pm", "div"), ("gstart", "gpm", "gpm")),
        start=(20, 80),
        step=(5, 60),
        count=(3, 12),
        size=(5, 25),
        divisor=(2, 9),
        max_result=999,
    ),
}

_PEOPLE: tuple[tuple[str, str], ...] = (
    ("Tom", "he"), ("Mia", "she"), ("Ravi", "he"), ("Lena", "she"), ("Omar", "he"),
    ("Sofia", "she"), ("Ken", "he"), ("Ana", "she"), ("Leo", "he"), ("Zoe", "she"),
    ("Sam", "he"), ("Priya", "she"), ("Hugo", "he"), ("Aisha", "she"), ("Noah", "he"),
    ("Yuki", "she"),
)  # fmt: skip
_TEACHERS: tuple[tuple[str, str], ...] = (
    ("Ms. Lee", "she"), ("Mr. Ortiz", "he"), ("Mrs. Chen", "she"), ("Mr. Brown", "he"),
    ("Ms. Diaz", "she"), ("Mr. Novak", "he"), ("Mrs. Okafor", "she"), ("Mr. Kim", "he"),
)  # fmt: skip
_PRONOUNS: dict[str, dict[str, str]] = {
    "he": {"He": "He", "he": "he", "His": "His", "his": "his", "him": "him"},
    "she": {"He": "She", "he": "she", "His": "Her", "his": "her", "him": "her"},
}

_Pair = tuple[str, str]


@dataclass(frozen=True)
class _Template:
    """A scenario: the phrases for each operation. Every condition phrase holds one ``{n}``.

    Placeholders: {name}, {friend}, {items}, {place}, {units}, and pronouns {He} {he} {His}
    {his} {him} of {name}. Question phrases (``total``, the second of each ``div`` pair) hold no
    number: they become shard 1.
    """

    name: str
    items: tuple[str, ...]
    start: tuple[str, ...]
    gstart: tuple[_Pair, ...]
    add: tuple[str, ...]
    sub: tuple[str, ...]
    gadd: tuple[_Pair, ...]
    gsub: tuple[_Pair, ...]
    div: tuple[_Pair, ...]  # (condition, question)
    total: tuple[str, ...]  # question when the story does not end with a division
    distractors: tuple[str, ...]  # irrelevant detail, no number
    number_distractors: tuple[str, ...]  # irrelevant detail with one {n} (levels >= 3)
    people: tuple[tuple[str, str], ...] = _PEOPLE


_TEMPLATES: tuple[_Template, ...] = (
    _Template(
        name="shopping",
        items=("apples", "oranges", "pencils", "stickers", "marbles", "erasers", "lemons"),
        start=("{name} has {n} {items}.", "{name} starts with {n} {items}."),
        gstart=(
            ("{name} buys {n} bags of {items}.", "Each bag holds {n} {items}."),
            ("{name} buys {n} packs of {items}.", "Each pack contains {n} {items}."),
        ),
        add=(
            "{He} buys {n} more {items}.",
            "{friend} gives {him} {n} more {items}.",
            "{He} finds {n} more {items}.",
        ),
        sub=(
            "{He} gives {n} {items} to {friend}.",
            "{He} loses {n} {items} on the way home.",
            "{He} uses {n} of the {items}.",
        ),
        gadd=(("{He} also buys {n} boxes of {items}.", "Each box holds {n} {items}."),),
        gsub=(("{He} gives {n} of {his} friends some {items}.", "Each friend gets {n} {items}."),),
        div=(
            (
                "{He} shares all the {items} equally among {n} friends.",
                "How many {items} does each friend get?",
            ),
            (
                "{He} puts all the {items} into {n} baskets, the same number in each.",
                "How many {items} are in each basket?",
            ),
        ),
        total=("How many {items} does {name} have now?",),
        distractors=(
            "{name} goes to the market on a sunny day.",
            "{friend} is {name}'s best friend.",
        ),
        number_distractors=("The market opens at {n} o'clock.", "{friend} is {n} years old."),
    ),
    _Template(
        name="baking",
        items=("cookies", "muffins", "cupcakes", "brownies", "rolls"),
        start=("{name} bakes {n} {items}.",),
        gstart=(("{name} bakes {n} trays of {items}.", "Each tray holds {n} {items}."),),
        add=(
            "{He} bakes {n} more {items}.",
            "{friend} brings {him} {n} more {items}.",
            "{His} neighbor gives {him} {n} more {items}.",
        ),
        sub=(
            "{His} family eats {n} of the {items}.",
            "{He} sells {n} {items} at the bake sale.",
            "{He} gives {n} {items} to {friend}.",
        ),
        gadd=(("{He} bakes {n} more batches.", "Each batch makes {n} {items}."),),
        gsub=(("{He} fills {n} gift bags with {items}.", "Each gift bag gets {n} {items}."),),
        div=(
            (
                "{He} packs all the {items} equally into {n} boxes.",
                "How many {items} go in each box?",
            ),
        ),
        total=("How many {items} does {name} have now?",),
        distractors=("The kitchen smells wonderful.", "{name} wears a blue apron."),
        number_distractors=(
            "{name} starts baking at {n} o'clock.",
            "{His} recipe book is {n} years old.",
        ),
    ),
    _Template(
        name="travel",
        items=("miles", "kilometers"),
        start=("{name} needs to drive {n} {items} to get to {place}.",),
        gstart=(
            ("{name} plans a drive to {place} in {n} stages.", "Each stage is {n} {items} long."),
        ),
        add=(
            "A detour adds {n} {items} to the trip.",
            "{He} takes a wrong turn, which adds {n} {items} to the trip.",
            "A closed road adds {n} {items} to the route.",
        ),
        sub=(
            "{He} drives {n} {items}.",
            "{He} drives {n} {items} before lunch.",
            "After a short break, {he} drives {n} {items}.",
        ),
        gadd=(("Road works force {him} to take {n} detours.", "Each detour adds {n} {items}."),),
        gsub=(("{He} drives for {n} hours.", "{He} covers {n} {items} each hour."),),
        div=(
            (
                "{He} will drive the rest of the way over {n} days, the same distance each day.",
                "How many {items} will {name} drive each day?",
            ),
        ),
        total=("How many {items} does {name} still have to drive to reach {place}?",),
        distractors=("{name}'s car is red.", "{name} listens to music while driving."),
        number_distractors=("{name}'s car has {n} seats.", "{name} leaves at {n} o'clock."),
    ),
    _Template(
        name="savings",
        items=("dollars",),
        start=("{name} has ${n} in {his} piggy bank.", "{name} has saved ${n}."),
        gstart=(("{name} saves money for {n} weeks.", "{He} saves ${n} each week."),),
        add=(
            "{He} earns ${n} for walking a dog.",
            "{friend} gives {him} ${n}.",
            "{He} finds ${n} in {his} coat pocket.",
        ),
        sub=(
            "{He} spends ${n} on a book.",
            "{He} spends ${n} on a movie ticket.",
            "{He} pays ${n} for lunch.",
        ),
        gadd=(("{He} also washes {n} cars.", "{He} earns ${n} for each car."),),
        gsub=(("{He} buys {n} comic books.", "Each comic book costs ${n}."),),
        div=(
            (
                "{He} splits all {his} money equally into {n} envelopes.",
                "How many dollars are in each envelope?",
            ),
        ),
        total=("How many dollars does {name} have now?",),
        distractors=("{name} wants to buy a bike one day.", "{His} piggy bank is green."),
        number_distractors=("{name} is {n} years old.", "{friend} has {n} cousins."),
    ),
    _Template(
        name="classroom",
        items=("students",),
        start=("{name}'s class has {n} students.",),
        gstart=(("{name} teaches {n} small groups.", "Each group has {n} students."),),
        add=(
            "{n} new students join {name}'s class.",
            "{n} more students join the class.",
            "{n} students transfer into the class.",
        ),
        sub=(
            "{n} students move to another school.",
            "{n} students leave the class.",
            "{n} students switch to a different class.",
        ),
        gadd=(
            ("{n} vans bring visiting students to the class.", "Each van carries {n} students."),
        ),
        gsub=(("{n} teams leave early for a sports game.", "Each team has {n} students."),),
        div=(
            (
                "{name} splits the students into {n} teams of equal size.",
                "How many students are on each team?",
            ),
        ),
        total=("How many students are in {name}'s class now?",),
        distractors=("The classroom has big windows.", "{name} teaches science."),
        number_distractors=(
            "The classroom is on floor {n}.",
            "{name} has been a teacher for {n} years.",
        ),
        people=_TEACHERS,
    ),
    _Template(
        name="garden",
        items=("tulips", "sunflowers", "tomato plants", "roses", "daisies"),
        start=("{name} plants {n} {items}.",),
        gstart=(("{name} plants {n} rows of {items}.", "Each row has {n} {items}."),),
        add=(
            "{He} plants {n} more {items}.",
            "{friend} gives {him} {n} more {items} to plant.",
            "{He} buys {n} more {items} and plants them.",
        ),
        sub=(
            "Rabbits eat {n} of the {items}.",
            "{n} of the {items} dry up.",
            "{He} digs up {n} of the {items} and gives them away.",
        ),
        gadd=(("{He} plants {n} more pots of {items}.", "Each pot holds {n} {items}."),),
        gsub=(("{He} gives {friend} {n} trays of {items}.", "Each tray holds {n} {items}."),),
        div=(
            (
                "{He} moves all the {items} into {n} flower beds, the same number in each.",
                "How many {items} are in each bed?",
            ),
        ),
        total=("How many {items} does {name} have in the garden now?",),
        distractors=(
            "The garden gets a lot of sun.",
            "{name} waters the garden every morning.",
        ),
        number_distractors=(
            "The garden fence is {n} feet tall.",
            "{His} watering can holds {n} liters.",
        ),
    ),
    _Template(
        name="library",
        items=("books", "comics", "magazines"),
        start=("{name} has {n} {items} on a shelf.",),
        gstart=(("{name} gets {n} boxes of {items}.", "Each box holds {n} {items}."),),
        add=(
            "{He} puts {n} more {items} on the shelf.",
            "Readers return {n} {items}.",
            "{friend} donates {n} {items}.",
        ),
        sub=(
            "Readers borrow {n} of the {items}.",
            "{He} gives {n} {items} to {friend}.",
            "{n} of the {items} are sent out for repair.",
        ),
        gadd=(("A donation arrives in {n} crates.", "Each crate holds {n} {items}."),),
        gsub=(("{n} classes come to borrow {items}.", "Each class borrows {n} {items}."),),
        div=(
            (
                "{He} puts all the {items} on {n} shelves, the same number on each.",
                "How many {items} are on each shelf?",
            ),
        ),
        total=("How many {items} does {name} have now?",),
        distractors=("The library is quiet today.", "{name} likes mystery stories."),
        number_distractors=(
            "The library opens at {n} o'clock.",
            "{name} has worked there for {n} years.",
        ),
    ),
)
_TEMPLATES_BY_NAME: dict[str, _Template] = {t.name: t for t in _TEMPLATES}
#: Names of the scenario templates, in a stable order.
TEMPLATE_NAMES: tuple[str, ...] = tuple(t.name for t in _TEMPLATES)
_PLACES: tuple[str, ...] = ("the lake", "the beach", "the city", "the mountains", "the zoo")

#: Chance that a problem gets one irrelevant shard. None at level 1: measured on SmolLM2-135M,
#: a distractor alone turned most one-step problems into failures, and level 1 is there to be
#: solvable. The other levels get 5/9, so that about 1 problem in 3 of the default mix has one.
_DISTRACTOR_RATE: dict[int, float] = {1: 0.0, 2: 5 / 9, 3: 5 / 9, 4: 5 / 9, 5: 5 / 9, 6: 5 / 9}


def _sample_story(
    rng: random.Random, recipe: Sequence[str], lv: _Level
) -> tuple[list[tuple[str, tuple[int, ...]]], list[str], int] | None:
    """Draw the numbers of one story; None if the draw breaks a constraint (caller redraws).

    Constraints: every running total stays in [1, max_result], divisions are exact with a
    quotient of at least 2, so every answer is a positive integer.
    """
    ops: list[tuple[str, tuple[int, ...]]] = []
    steps: list[str] = []
    x = 0
    for kind in recipe:
        if kind == "start":
            x = rng.randint(*lv.start)
            ops.append((kind, (x,)))
        elif kind == "gstart":
            a, b = rng.randint(*lv.count), rng.randint(*lv.size)
            x = a * b
            steps.append(f"{a} × {b} = {x}")
            ops.append((kind, (a, b)))
        elif kind in ("add", "sub"):
            k = rng.randint(*lv.step)
            y = x + k if kind == "add" else x - k
            steps.append(f"{x} {'+' if kind == 'add' else '-'} {k} = {y}")
            x = y
            ops.append((kind, (k,)))
        elif kind in ("gadd", "gsub"):
            c, d = rng.randint(*lv.count), rng.randint(*lv.size)
            p = c * d
            y = x + p if kind == "gadd" else x - p
            steps.append(f"{c} × {d} = {p}")
            steps.append(f"{x} {'+' if kind == 'gadd' else '-'} {p} = {y}")
            x = y
            ops.append((kind, (c, d)))
        elif kind == "div":
            lo, hi = lv.divisor
            choices = [k for k in range(lo, hi + 1) if x % k == 0 and x // k >= 2]
            if not choices:
                return None
            k = rng.choice(choices)
            steps.append(f"{x} ÷ {k} = {x // k}")
            x //= k
            ops.append((kind, (k,)))
        else:  # pragma: no cover - recipes are static
            raise ValueError(f"unknown operation {kind!r}")
        if x < 1 or x > lv.max_result:
            return None
    return ops, steps, x


_P = TypeVar("_P", str, _Pair)


def _capitalize(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _later(sentence: str, ctx: Mapping[str, str]) -> str:
    """Mark a repeated event ("Later, he buys 3 more."), keeping proper names capitalised."""
    proper = sentence.startswith((ctx["name"], ctx["friend"])) or sentence[0].isdigit()
    return "Later, " + (sentence if proper else sentence[0].lower() + sentence[1:])


def make_problem(
    rng: random.Random, level: int, task_id: str, template: str | None = None
) -> Instruction:
    """One problem of the given difficulty level, drawn with ``rng`` only.

    Exposed (besides :func:`generate`) so that calibration scripts and tests can ask for a
    single level or template.
    """
    if level not in _LEVELS:
        raise ValueError(f"difficulty level must be one of {sorted(_LEVELS)}, got {level}")
    lv = _LEVELS[level]
    tpl = _TEMPLATES_BY_NAME[template] if template else rng.choice(_TEMPLATES)
    recipe = [
        rng.choice(("add", "sub"))
        if op == "pm"
        else rng.choice(("gadd", "gsub"))
        if op == "gpm"
        else op
        for op in rng.choice(lv.recipes)
    ]
    for _ in range(10_000):
        story = _sample_story(rng, recipe, lv)
        if story is not None:
            break
    else:  # pragma: no cover - the ranges make this practically impossible
        raise RuntimeError(f"could not draw numbers for level {level} recipe {recipe}")
    ops, steps, answer = story

    name, pron = rng.choice(tpl.people)
    friend = rng.choice([p for p, _ in _PEOPLE if p != name])
    ctx: dict[str, str] = {
        "name": name,
        "friend": friend,
        "items": rng.choice(tpl.items),
        "place": rng.choice(_PLACES),
        **_PRONOUNS[pron],
    }

    used: set[object] = set()

    def pick(options: Sequence[_P]) -> tuple[_P, bool]:
        """A phrase not used yet in this story, so that two additions read differently; the
        flag says every variant was taken (the caller then writes "Later, ...")."""
        fresh = [o for o in options if o not in used]
        choice = rng.choice(fresh or list(options))
        used.add(choice)
        return choice, not fresh

    conditions: list[str] = []
    boundaries = [0]  # where a distractor may go: never inside a two-sentence operation
    question = rng.choice(tpl.total).format(**ctx)
    for kind, nums in ops:
        if kind in ("start", "add", "sub"):
            phrase, again = pick(getattr(tpl, kind))
            sentences = [phrase.format(n=nums[0], **ctx)]
        elif kind in ("gstart", "gadd", "gsub"):
            (first, second), again = pick(getattr(tpl, kind))
            sentences = [first.format(n=nums[0], **ctx), second.format(n=nums[1], **ctx)]
        else:  # div: also decides the question
            (cond, q), again = pick(tpl.div)
            sentences = [cond.format(n=nums[0], **ctx)]
            question = q.format(**ctx)
        if again:
            sentences[0] = _later(sentences[0], ctx)
        conditions.extend(_capitalize(c) for c in sentences)
        boundaries.append(len(conditions))

    distractor_at: int | None = None
    if rng.random() < _DISTRACTOR_RATE[level]:
        # Numbers in a distractor are a real trap (GSM-IC); keep them out of the easy levels.
        pool = tpl.distractors + (tpl.number_distractors if level >= 3 else ())
        text = rng.choice(pool).format(n=rng.randint(3, 12), **ctx)
        distractor_at = rng.choice(boundaries)
        conditions.insert(distractor_at, _capitalize(text))

    shards = [Shard(1, question)] + [Shard(i + 2, c) for i, c in enumerate(conditions)]
    distractor_id = None if distractor_at is None else distractor_at + 2
    required = [s.shard_id for s in shards if s.shard_id != distractor_id]
    return Instruction(
        task_id=task_id,
        task="math",
        shards=shards,
        required_shards=required,
        fields={
            "question": " ".join([*conditions, question]),
            "answer": str(answer),
            "difficulty": level,
            "template": tpl.name,
            "solution": f"{'; '.join(steps)}. Answer: {answer}",
        },
    )


def _level_plan(n: int, mix: Mapping[int, float], rng: random.Random) -> list[int]:
    """Exactly ``round(n * share)`` problems per level (largest remainder), in random order.

    Quotas rather than independent draws, so that a set of 200 has the advertised mix and not
    whatever the seed happens to give.
    """
    total = sum(mix.values())
    if n < 0 or total <= 0 or any(w < 0 for w in mix.values()):
        raise ValueError("n must be >= 0 and the level mix must have positive weights")
    exact = {lvl: n * w / total for lvl, w in sorted(mix.items())}
    counts = {lvl: int(v) for lvl, v in exact.items()}
    by_remainder = sorted(exact, key=lambda lvl: (-(exact[lvl] - counts[lvl]), lvl))
    for lvl in by_remainder[: n - sum(counts.values())]:
        counts[lvl] += 1
    plan = [lvl for lvl, c in counts.items() for _ in range(c)]
    rng.shuffle(plan)
    return plan


def generate(n: int, seed: int, mix: Mapping[int, float] | None = None) -> list[Instruction]:
    """``n`` problems from ``random.Random(seed)``; levels follow ``mix`` (default
    :data:`DEFAULT_LEVEL_MIX`: mostly easy)."""
    rng = random.Random(seed)
    plan = _level_plan(n, DEFAULT_LEVEL_MIX if mix is None else mix, rng)
    return [make_problem(rng, lvl, f"math-gen-{seed}-{i:04d}") for i, lvl in enumerate(plan)]
