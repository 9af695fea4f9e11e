"""Jinja2 templates from ``prompts/``: system prompts, simulator and judge prompts."""

from __future__ import annotations

from functools import lru_cache

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
