"""Model strings → backends.

- ``local/smollm2``: the embedded SmolLM2-135M-Instruct (see :mod:`icpo_eval.models.local`).
- ``hf/<path>``: any transformers checkpoint with a chat template (ICPO outputs included).
- anything else, ``provider/model``: through litellm (``openai/gpt-4o-mini``, ``hosted_vllm/<id>``
  with an api base, ``ollama_chat/<id>``, ``azure/<deployment>`` ...; see
  :mod:`icpo_eval.models.api`). An API model never imports torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icpo_eval.errors import IcpoError
from icpo_eval.models.base import Backend, Generation, GenParams, Messages

if TYPE_CHECKING:
    from icpo_eval.models.api import ApiSettings

__all__ = ["Backend", "Generation", "GenParams", "Messages", "load_backend", "check_model_name"]

LOCAL_MODELS = ("smollm2",)


def model_kind(model: str) -> str:
    """``local``, ``hf`` or ``api``: which backend serves the model string; the one place that
    reads it. An unknown string is refused with one line, before any work starts."""
    provider, _, rest = model.partition("/")
    if provider == "local":
        if rest not in LOCAL_MODELS:
            known = ", ".join(f"local/{m}" for m in LOCAL_MODELS)
            raise IcpoError(f"unknown local model {model!r} (known: {known})")
        return "local"
    if provider == "hf" and rest:
        return "hf"
    if provider and rest.strip() and provider not in ("local", "hf"):
        return "api"
    raise IcpoError(
        f"unknown model {model!r}: use local/smollm2, hf/<checkpoint path> or a litellm "
        "provider/model string (openai/gpt-4o-mini, hosted_vllm/<id> with --api-base, ...)"
    )


def check_model_name(model: str) -> None:
    """Refuse an unknown model string (see :func:`model_kind`)."""
    model_kind(model)


def load_backend(
    model: str, batch_size: int | None = 16, api: ApiSettings | None = None
) -> Backend:
    """The backend for ``model``. ``api`` (how API calls travel) is used only by an API model;
    ``batch_size`` only by a local one (None: ``auto``, the backend picks). A local model never
    imports litellm, an API model never imports torch or transformers."""
    kind = model_kind(model)
    if kind == "api":
        from icpo_eval.models.api import ApiBackend

        return ApiBackend(model, api)
    from icpo_eval.models.local import LocalBackend, smollm2_checkpoint

    path = smollm2_checkpoint() if kind == "local" else model[len("hf/") :]
    return LocalBackend(model, path, batch_size=batch_size)
