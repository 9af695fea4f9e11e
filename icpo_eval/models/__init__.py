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


def check_model_name(model: str) -> None:
    """Refuse an unknown model string before any work starts."""
    if model.startswith("local/"):
        if model.split("/", 1)[1] not in LOCAL_MODELS:
            known = ", ".join(f"local/{m}" for m in LOCAL_MODELS)
            raise IcpoError(f"unknown local model {model!r} (known: {known})")
        return
    if model.startswith("hf/") and len(model) > 3:
        return
    if is_api_model(model):
        return
    raise IcpoError(
        f"unknown model {model!r}: use local/smollm2, hf/<checkpoint path> or a litellm "
        "provider/model string (openai/gpt-4o-mini, hosted_vllm/<id> with --api-base, ...)"
    )


def is_api_model(model: str) -> bool:
    """``provider/model`` where provider is neither ``local`` nor ``hf``: served by litellm."""
    provider, _, rest = model.partition("/")
    return bool(provider and rest.strip()) and provider not in ("local", "hf")


def load_backend(model: str, batch_size: int = 16, api: ApiSettings | None = None) -> Backend:
    check_model_name(model)
    if is_api_model(model):
        from icpo_eval.models.api import ApiBackend

        return ApiBackend(model, api)
    from icpo_eval.models.local import LocalBackend, smollm2_checkpoint

    if model == "local/smollm2":
        return LocalBackend(model, smollm2_checkpoint(), batch_size=batch_size)
    return LocalBackend(model, model[len("hf/") :], batch_size=batch_size)
