"""Where icpo-eval finds its bundled folders and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

#: The project root: the folder holding tasks/, prompts/, simulators/ next to the package.
ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = ROOT / "tasks"
PROMPTS_DIR = ROOT / "prompts"
SIMULATORS_DIR = ROOT / "simulators"


def cache_dir() -> Path:
    """User cache directory; ``ICPO_EVAL_CACHE`` overrides it."""
    env = os.environ.get("ICPO_EVAL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "icpo-eval"
