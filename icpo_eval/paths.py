"""Where icpo-eval finds its bundled folders and keeps its caches.

``tasks/``, ``prompts/`` and ``simulators/`` are folders users read and edit, so the repository
keeps them at its top level, beside the package. The built wheel carries copies inside the
package, at ``icpo_eval/_data/<folder>`` (``setup.py`` puts them there), so that an installed
icpo-eval works from any folder. An editable install or a plain checkout reads them in place.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """The bundled folder ``name``: inside the installed package, else beside it (a checkout)."""
    installed = PACKAGE_DIR / "_data" / name
    return installed if installed.is_dir() else PACKAGE_DIR.parent / name


TASKS_DIR = bundled_dir("tasks")
PROMPTS_DIR = bundled_dir("prompts")
SIMULATORS_DIR = bundled_dir("simulators")


def cache_dir() -> Path:
    """User cache directory; ``ICPO_EVAL_CACHE`` overrides it."""
    env = os.environ.get("ICPO_EVAL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "icpo-eval"
