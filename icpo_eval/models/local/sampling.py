"""Seeded sampling whose result does not depend on the batch a request shares.

``transformers.generate`` samples from the global torch RNG, which would make a conversation's
text depend on which other conversations shared its batch. Instead we run greedy decoding over
logits perturbed with Gumbel noise drawn from one ``torch.Generator`` per request: the argmax of
``logits / T + Gumbel`` is an exact sample from ``softmax(logits / T)`` (the Gumbel-max trick),
and each request's noise depends only on its own seed.

Needs torch: imported by the backend only once torch is known to be installed.
"""

from __future__ import annotations

from typing import Any

import torch


class GumbelSampler:
    """Logits processor that turns greedy decoding into seeded sampling (see module doc)."""

    def __init__(self, generators: list[Any], temperature: float, top_p: float):
        self.temperature = temperature
        self.top_p = top_p
        self.generators = generators  # one torch.Generator per batch row

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_scores, sorted_idx = torch.sort(scores, descending=True, dim=-1)
            probs = sorted_scores.softmax(dim=-1)
            # Drop a token when the tokens ranked above it already reach top_p.
            drop_sorted = (probs.cumsum(dim=-1) - probs) >= self.top_p
            drop = drop_sorted.scatter(1, sorted_idx, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        noise = torch.stack(
            [
                torch.rand(scores.shape[1], generator=g, device=scores.device)
                for g in self.generators
            ]
        )
        gumbel = -torch.log(-torch.log(noise.clamp_min(1e-20)))
        return scores + gumbel


def seeded(seed: int, device: str) -> Any:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (one per request)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
