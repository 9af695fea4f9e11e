"""Which export rows become training prompts: one rule for the TRL trainer and the verl export.

:func:`select_rows` dedupes prompts, keeps the chosen sources, drops prompts over a token
budget, balances fully specified against underspecified prompts and shuffles with a seed. Its
parameters are a :class:`Selection`, or anything with the same fields (a
:class:`icpo_eval.train.Recipe` is used as is), so that ``icpo-eval train`` and
``icpo-eval export --format verl`` select exactly the same prompts from the same rows.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icpo_eval.errors import IcpoError

SOURCES = ("run", "augment")


@dataclass
class Selection:
    """The data-selection keys of a recipe; the defaults are :class:`Recipe`'s."""

    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    #: Resample so that this share of prompts is underspecified (None: keep the export's mix).
    underspecified_share: float | None = 0.5
    #: Drop prompts longer than this many tokens (chat template included); None keeps all.
    max_prompt_tokens: int | None = None
    #: Keep at most this many prompts after balancing (None: all).
    max_prompts: int | None = None
    seed: int = 0
    #: The policy whose tokenizer counts prompt tokens (a recipe's ``model``); only read when
    #: ``max_prompt_tokens`` is set.
    model: str = "local/smollm2"

    @classmethod
    def from_recipe(cls, recipe: Any) -> Selection:
        """The selection keys of a recipe (or of any object that has them)."""
        return cls(**{f.name: getattr(recipe, f.name) for f in dataclasses.fields(cls)})

    def check(self) -> None:
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise IcpoError(f"sources must be a non-empty subset of [run, augment], got {bad}")
        if self.underspecified_share is not None and not 0 < self.underspecified_share < 1:
            raise IcpoError("underspecified_share must be between 0 and 1 (exclusive) or null")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def token_counter(self) -> Callable[[list[dict[str, str]]], int] | None:
        """Counts a prompt's tokens as the trainer does (the policy's tokenizer, chat template
        and generation cue); None when ``max_prompt_tokens`` is unset (nothing to count)."""
        if not self.max_prompt_tokens:
            return None
        from icpo_eval.train import Recipe, prompt_tokens

        path = Recipe(model=self.model).model_path
        if not Path(path).exists():
            raise IcpoError(f"max_prompt_tokens needs the model's tokenizer: {path} not found")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        return lambda messages: prompt_tokens(tok, messages)


def load_selection(path: str | Path) -> Selection:
    """The selection keys of a recipe YAML (checked as ``icpo-eval train`` checks it)."""
    from icpo_eval.train import load_recipe

    return Selection.from_recipe(load_recipe(path))


def select_rows(
    rows: list[dict[str, Any]],
    recipe: Any,
    count_tokens: Callable[[list[dict[str, str]]], int] | None = None,
) -> list[dict[str, Any]]:
    """The training prompts: unique, filtered, balanced and shuffled with the recipe's seed.

    ``recipe`` is a :class:`Selection` or a recipe with the same fields; ``count_tokens`` counts
    a prompt's tokens (needed only when ``max_prompt_tokens`` is set).
    """
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["source"] not in recipe.sources:
            continue
        key = json.dumps([row["prompt"], bool(row["fully_specified"])], sort_keys=True)
        if key in seen:  # greedy runs repeat prompts; one copy is enough for GRPO
            continue
        seen.add(key)
        if recipe.max_prompt_tokens and count_tokens is not None:
            if count_tokens(row["prompt"]) > recipe.max_prompt_tokens:
                continue
        unique.append(row)
    rng = random.Random(recipe.seed)
    full = [r for r in unique if r["fully_specified"]]
    under = [r for r in unique if not r["fully_specified"]]
    share = recipe.underspecified_share
    if share is not None and full and under:
        # Downsample the larger side to reach the share (never duplicate prompts).
        want_under = round(len(full) * share / (1 - share))
        if want_under <= len(under):
            under = rng.sample(under, want_under)
        else:
            full = rng.sample(full, round(len(under) * (1 - share) / share))
    picked = full + under
    rng.shuffle(picked)
    if recipe.max_prompts:
        picked = picked[: recipe.max_prompts]
    if not picked:
        raise IcpoError("no training prompts left after selection (check sources and limits)")
    return picked
