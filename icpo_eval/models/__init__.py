"""Model strings → backends.

- ``local/smollm2``: the embedded SmolLM2-135M-Instruct (see :mod:`icpo_eval.models.local`).
- ``hf/<path>``: any transformers checkpoint with a chat template (ICPO outputs included).
"""

from __future__ import annotations

from icpo_eval.errors import IcpoError
from icpo_eval.models.base import Backend, Generation, GenParams, Messages

__all__ = ["Backend", "Generation", "GenParams", "Messages", "load_backend", "check_model_name"]

LOCAL_MODELS = ("smollm2",)


def check_model_name(model: str) -> None:
    """Refuse an unknown model string before any work starts."""
    if model.startswith("local/"):
        if model.split("/", 1)[1] not in LOCAL_MODELS:
            known = ", ".join(f"local/{m}" for m in LOCAL_MODELS)
            raise IcpoError(f"unknown local model {model!r} (known: {known})")
        return
    if model.startswith("hf/") and len(model) > 3:
        return
    raise IcpoError(f"unknown model {model!r}: use local/smollm2 or hf/<checkpoint path>")


def load_backend(model: str, batch_size: int = 16) -> Backend:
    check_model_name(model)
    from icpo_eval.models.local import LocalBackend, smollm2_checkpoint

    if model == "local/smollm2":
        return LocalBackend(model, smollm2_checkpoint(), batch_size=batch_size)
    return LocalBackend(model, model[len("hf/") :], batch_size=batch_size)
