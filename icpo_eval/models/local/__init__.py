"""The local transformers backend (``local/smollm2``, ``hf/<path>``), one idea per module:

- :mod:`.checkpoint`: the embedded SmolLM2 GGUF, converted once to a safetensors cache, and
  the install hints;
- :mod:`.backend`: :class:`LocalBackend`, loading a checkpoint and answering chats;
- :mod:`.sampling`: seeded Gumbel-max sampling, one generator per request;
- :mod:`.kv_store`: the continuous batch's key/value store, fixed-size blocks that rows take
  and give back (``BlockPool``), and attention over per-row lengths for packed steps
  (``ragged_attention``, registered with transformers' ``AttentionInterface``);
- :mod:`.batch`: continuous batching: one forward pass per step for every live row (decoding
  rows and chunks of joining prompts together), prefix caching across a conversation's turns.

Importing this package needs neither torch nor transformers (a missing install is reported
when a backend is made); ``sampling``, ``kv_store`` and ``batch`` import them at the top and
are loaded by the backend only after that check.
"""

from icpo_eval.models.local.backend import LocalBackend
from icpo_eval.models.local.checkpoint import (
    LOCAL_INSTALL,
    SMOLLM2_GGUF,
    SMOLLM2_INSTALL,
    SMOLLM2_PACKAGE,
    smollm2_checkpoint,
)

__all__ = [
    "LOCAL_INSTALL",
    "SMOLLM2_GGUF",
    "SMOLLM2_INSTALL",
    "SMOLLM2_PACKAGE",
    "LocalBackend",
    "smollm2_checkpoint",
]
