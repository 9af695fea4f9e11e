"""How many weights a small learning rate moves: bf16 weights vs fp32 weights under bf16 autocast.

The ICPO paper trains at lr 1e-6. AdamW's first steps move every weight by about the learning
rate, and bf16 has 8 bits of mantissa: a weight near 1.0 (a norm weight) sits on a grid of
2^-7, so a 1e-6 step rounds away. The trainer therefore keeps fp32 weights and uses bf16 only
as autocast (``bf16: true`` in a recipe). This script takes the embedded model, makes the same
AdamW steps on one language-modelling batch both ways, and counts the weights that changed. The
last line is

    moved_ratio = share of weights changed (fp32 + autocast) ÷ share changed (bf16 weights)

Run: ``.venv/bin/python benchmarks/bf16_updates.py [--lr 1e-6] [--steps 2]`` (about 20 s).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from icpo_eval.models.local import smollm2_checkpoint  # noqa: E402

TEXT = "Tom starts with 3 apples and buys 5 more. How many apples does Tom have? He has 8."


def changed_shares(path: str, dtype: torch.dtype, autocast: bool, lr: float, steps: int):
    """(share of all weights changed, share of norm weights changed) after ``steps`` steps."""
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    batch = tok([TEXT], return_tensors="pt")
    params = dict(model.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    def share(keys: list[str]) -> float:
        moved = sum(int((params[k].detach() != before[k]).sum()) for k in keys)
        return moved / sum(before[k].numel() for k in keys)

    norms = [k for k in params if k.endswith("norm.weight")]
    return share(list(params)), share(norms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    path = str(smollm2_checkpoint())
    rows = [
        ("bf16 weights", *changed_shares(path, torch.bfloat16, False, a.lr, a.steps)),
        ("fp32 weights, bf16 autocast", *changed_shares(path, torch.float32, True, a.lr, a.steps)),
    ]
    print(
        f"| weights ({a.steps} AdamW steps, lr {a.lr:g}) | weights changed | norm weights changed |"
    )
    print("|---|---|---|")
    for name, every, norms in rows:
        print(f"| {name} | {every:.2%} | {norms:.2%} |")
    print(f"moved_ratio={rows[1][1] / max(rows[0][1], 1e-12):.1f}")


if __name__ == "__main__":
    main()
