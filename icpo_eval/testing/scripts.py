"""Import a script that is not part of a package (``train/*.py``, ``benchmarks/*.py``) by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path | str, name: str | None = None) -> ModuleType:
    """The module of the script at ``path``, executed once and registered as ``name`` (its
    file's stem by default) in ``sys.modules``, where dataclasses look their module up."""
    path = Path(path)
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a Python script")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
