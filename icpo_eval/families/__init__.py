"""Task families: how to make, show, extract and grade the tasks of one kind.

Each family is one module in this package (``math.py`` ...) that grades: it defines a
:class:`Family` subclass and registers it with :func:`register`. The tasks of a generated family
are made by a module beside it (``math_make.py`` ..., named by :attr:`Family.maker`), loaded
only when tasks are made (``icpo-eval tasks generate``, a training recipe's pool), never to grade;
:mod:`icpo_eval.families.text` holds the text helpers (fenced blocks, numbers, sentences) that
the families and the judges share. The engine only talks to families through this interface,
so adding a family never touches the conversation loop.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Collection, Iterator
from typing import Any

from icpo_eval.errors import IcpoError
from icpo_eval.records import Instruction


class Family:
    """Base class of a task family. Subclasses override what differs."""

    #: Family name as written in ``Instruction.task`` and on the command line.
    name: str = ""
    #: Jinja2 template in ``prompts/`` holding the assistant's system prompt.
    system_prompt_template: str = "system_default.j2"
    #: When True, a reply from which :meth:`extract` gets an answer (a code block, a SQL query,
    #: a function call) is an answer attempt whatever prose surrounds it; the turn judges ask
    #: the family before applying their own cues. Numeric families leave it False, because a
    #: number in a reply is as often the user's own number repeated as an answer.
    answer_by_extraction: bool = False
    #: What a complete answer of this family is, in words the LLM judge is shown
    #: (``prompts/judge_llm.j2``): Lost-in-Conversation's categorisation asks for an answer
    #: attempt of the task's own shape ("one final number", "a complete SQL query").
    answer_shape: str = "a complete, final answer to the user's request"
    #: True for families whose grading runs model-written programs in the sandbox; their
    #: conversations record the sandbox's strength, and ``--sandbox strict`` refuses to grade
    #: them without the kernel boundary.
    uses_sandbox: bool = False
    #: Module that makes this family's tasks; its ``generate(n, seed, **options)`` backs
    #: :meth:`generate`. Imported only then, so that grading never loads the generators.
    maker: str = ""
    #: Fields that may hold the fully specified instruction as one text (LiC's
    #: ``fully_specified_question``, a generated ``question``), tried in order by
    #: :meth:`full_prompt`.
    full_prompt_fields: tuple[str, ...] = ()
    #: Words naming what the system prompt invites the assistant to ask about in every task of
    #: the family ("whether more of the document is coming", "the function's name and
    #: parameters"): the judges count them as words of every task when they decide whether a
    #: non-answer engages with its task (:func:`icpo_eval.reward.withheld_reason`).
    asked_about: tuple[str, ...] = ()

    def generate(self, n: int, seed: int, **options: Any) -> list[Instruction]:
        """Make ``n`` instances; the same seed always gives the same list."""
        if not self.maker:
            raise IcpoError(f"family {self.name!r} cannot generate tasks")
        made: list[Instruction] = importlib.import_module(self.maker).generate(n, seed, **options)
        return made

    def system_prompt(self, inst: Instruction) -> str:
        """The assistant's system prompt for this instruction.

        Rendered from :attr:`system_prompt_template` with :meth:`prompt_variables`; families
        whose prompt depends on the instance (the actions family lists the functions the
        instance may call) override :meth:`prompt_variables`.
        """
        from icpo_eval.prompting import render_prompt

        return render_prompt(self.system_prompt_template, **self.prompt_variables(inst))

    def prompt_variables(self, inst: Instruction) -> dict[str, Any]:
        """Variables of the system prompt template; none by default."""
        return {}

    def full_prompt(self, inst: Instruction) -> str:
        """The original, fully specified instruction, shown in ``full`` mode: the first of
        :attr:`full_prompt_fields` that holds text, else the shards joined."""
        for key in self.full_prompt_fields:
            text = inst.fields.get(key)
            if isinstance(text, str) and text.strip():
                return text
        return " ".join(s.shard for s in inst.shards)

    def underspecified_variants(
        self, inst: Instruction, rng: random.Random, n: int = 2
    ) -> list[tuple[str, list[int]]]:
        """Up to ``n`` single-turn prompts that lack 1–2 required conditions (ICPO's q*).

        Each is ``(prompt, removed shard ids)``: the instruction's shards in order, with one or
        two required shards other than shard 1 (the intent) left out and the rest joined as one
        paragraph. For generated families ``required_shards`` makes the variants exactly
        underspecified; for LiC records every shard counts as required, so any non-first shard
        may go. Instructions with no removable shard have no variants.
        """
        removable = sorted(inst.required_ids - {inst.shards[0].shard_id})
        if not removable:
            return []
        candidates = [[i] for i in removable]
        candidates += [[a, b] for j, a in enumerate(removable) for b in removable[j + 1 :]]
        singles, pairs = candidates[: len(removable)], candidates[len(removable) :]
        rng.shuffle(singles)
        rng.shuffle(pairs)
        # Alternate one-removed and two-removed variants so that both kinds appear.
        order = [c for pair in zip(singles, pairs) for c in pair]
        order += singles[len(pairs) :] + pairs[len(singles) :]
        return [(shards_without(inst, removed), removed) for removed in order[:n]]

    def extract(self, inst: Instruction, response: str) -> str | None:
        """The answer the response commits to, normalised, or None."""
        raise NotImplementedError

    def answer_problem(self, inst: Instruction, response: str, answer: str) -> str | None:
        """Why ``answer``, extracted from ``response``, is not one complete and final answer of
        the family's shape (Lost-in-Conversation: an answer attempt is "not templated or
        hypothetical"), or None when it is one:

        - ``"template"``: it leaves placeholders for the user to fill (``'<FIRST_NAME>'``,
          ``'YYYY-MM-DD'``, a ``...`` body, ``amount=?``);
        - ``"fragment"``: it is part of an answer (a lone ``WHERE`` clause);
        - ``"alternatives"``: the reply offers several different answers, one per reading of
          the task (a hedge).

        The turn judges ask it of families with :attr:`answer_by_extraction`; the default finds
        no problem.
        """
        return None

    def normalise_record(self, rec: dict[str, Any], where: str) -> dict[str, Any]:
        """A LiC-format record of this family as read from a file or dataset (string fields
        already decoded), rewritten into the layout :class:`Instruction` takes, before the
        loader's checks: the summary family writes the documents that LiC's shards name by
        ``doc_idxs`` into the shards' text. The default returns it unchanged."""
        return rec

    def preflight(self, instructions: list[Instruction]) -> list[str]:
        """Check, before the first model call of a run, what grading these instructions (all of
        this family) will need: raise :class:`~icpo_eval.errors.IcpoError` (one line naming
        every problem, e.g. every missing database and where it is expected) when the run could
        not grade them, and return warning lines for what it can grade but not well (a
        reference that returns no rows). The default checks nothing."""
        return []

    def with_grader(self, grader: str, api: Any = None) -> Family:
        """This family graded by ``grader`` (``--grader``: ``rule`` or ``llm:MODEL``; ``api``:
        how an LLM grader's calls travel, an :class:`~icpo_eval.models.api.ApiSettings`).
        Families whose evaluation needs no model ignore it and return themselves; the summary
        family returns a copy that grades with the LLM."""
        return self

    def evaluate(self, inst: Instruction, answer: str | None) -> float:
        """Score in [0, 1] of an extracted answer against the instruction's reference."""
        raise NotImplementedError

    def grade(self, inst: Instruction, answer: str | None) -> tuple[float, dict[str, Any] | None]:
        """Score plus details worth recording on the turn (``Turn.detail``).

        Families whose evaluation has more to say than the score (tests passed of total, rows
        returned) override this; the default has no details.
        """
        return self.evaluate(inst, answer), None


def in_rounds(rng: random.Random, names: list[str], n: int) -> Iterator[str]:
    """``n`` picks of ``names`` for a task maker: every name once per round, in an order
    ``rng`` shuffles at the start of every round, so that each appears about equally often.
    Lazy: each round's shuffle happens when its first pick is taken, so a maker that draws
    from the same ``rng`` between picks gets the same instances as a loop would."""
    order = list(names)
    for i in range(n):
        if i % len(order) == 0:
            rng.shuffle(order)
        yield order[i % len(order)]


def refuse_bad_records(
    instructions: list[Instruction], check: Callable[[Instruction], object], shown: int = 5
) -> None:
    """Run ``check`` (which raises :class:`IcpoError` for a record it cannot use) on every
    instruction, and raise one IcpoError naming the first ``shown`` bad ones and how many more:
    the body of a family's :meth:`Family.preflight` that decodes its records up front."""
    bad: list[str] = []
    for inst in instructions:
        try:
            check(inst)
        except IcpoError as e:
            bad.append(str(e))
    if bad:
        more = f" (and {len(bad) - shown} more)" if len(bad) > shown else ""
        raise IcpoError("; ".join(bad[:shown]) + more)


def shards_without(inst: Instruction, removed: Collection[int]) -> str:
    """The instruction's shards in order, those whose id is in ``removed`` left out, joined as
    one paragraph (the prompt of a q* variant)."""
    return " ".join(s.shard for s in inst.shards if s.shard_id not in removed)


_REGISTRY: dict[str, Family] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family available by its ``name``."""
    _REGISTRY[cls.name] = cls()
    return cls


def get_family(name: str) -> Family:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise IcpoError(f"unknown task family {name!r} (known: {known})") from None


def family_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    # Imported lazily so that `import icpo_eval.families` has no import cycle.
    from icpo_eval.families import (  # noqa: F401
        actions,
        code,
        data2text,
        database,
        math,
        summary,
        translation,
    )
