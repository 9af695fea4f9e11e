"""Jinja2 templates from ``prompts/`` (system, simulator and judge prompts) and reading the JSON
that LLM simulators and judges answer with."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from icpo_eval.paths import PROMPTS_DIR


@lru_cache(maxsize=1)
def _env() -> Environment:
    # StrictUndefined: a variable missing from a template is an error, never an empty string.
    return Environment(
        loader=FileSystemLoader(str(PROMPTS_DIR)), undefined=StrictUndefined, autoescape=False
    )


def render_prompt(template: str, **variables: object) -> str:
    """Render ``prompts/<template>`` with ``variables``, stripped of surrounding whitespace."""
    return _env().get_template(template).render(**variables).strip()


def first_json_object(text: str) -> Any:
    """The first JSON value starting at a ``{`` in ``text`` (code fences and chatter around it
    are ignored), or None."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
            return obj
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    return None
