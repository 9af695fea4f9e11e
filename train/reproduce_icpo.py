"""Reproduce the ICPO paper's findings with the embedded model, on CPU, end to end.

    .venv/bin/python train/reproduce_icpo.py            # everything (about 2 hours on 2 cores)
    .venv/bin/python train/reproduce_icpo.py --quick    # a smoke run of every step (minutes)

(a) Lost in conversation: SmolLM2 in full, concat and sharded mode, several sampled runs per
    instruction, on the first ``--eval-limit`` instructions of each committed family set.
(b) ICPO: the base model's conversations on *training* instructions (a math set generated with
    another seed, level 1, minus any problem whose text is in the evaluation set) are exported
    with q* augmentation, the model is trained with ``train/smollm2-cpu-30min.yaml`` (a 28-minute
    budget), and base and trained models are evaluated on the held-out evaluation instructions.

Every step skips what is already done (runs resume, an existing export or checkpoint is kept),
so the script can be stopped and restarted. Large outputs go to ``--work`` (not committed); the
small results go to ``results/fidelity/``: ``leaderboard.csv`` (base and trained in separate
rows), ``summary.md`` / ``summary.json`` (every figure with a 95% bootstrap interval over
instructions, differences paired), ``progress.csv`` (non-answer share by conversation progress),
``train_log.jsonl`` and ``report.html``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from icpo_eval.families import get_family  # noqa: E402
from icpo_eval.metrics import (  # noqa: E402
    bootstrap_ci,
    degradation,
    non_answer_rate,
    non_answer_share_by_progress,
    over_clarification_rate,
    performance,
    premature_answer_rate,
)
from icpo_eval.records import Conversation  # noqa: E402
from icpo_eval.store import load_run  # noqa: E402
from icpo_eval.tasksets import load_tasks, write_jsonl  # noqa: E402

BASE = "local/smollm2"
RECIPE = ROOT / "train" / "smollm2-cpu-30min.yaml"
TRAINED_DIR = "checkpoints/smollm2-icpo"
MODES = "full,concat,sharded"


def sh(*args: str) -> None:
    """Run one icpo-eval command from the repository root, echoing it and its duration."""
    cmd = [sys.executable, "-m", "icpo_eval", *args]
    print("$ icpo-eval " + " ".join(args), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def training_tasks(work: Path, eval_texts: set[str], n: int) -> Path:
    """Math instructions never seen in evaluation: another generator seed, level 1 only.

    Level 1 because a fully specified prompt only teaches "answer when you can" if the model
    sometimes answers it right (GRPO learns nothing from a group whose rewards are all 0):
    greedy SmolLM2 solves about a quarter of level 1 and none of level 2.
    """
    path = work / "math-train.jsonl"
    if path.exists():
        return path
    family = get_family("math")
    pool = family.generate(4 * n, seed=1)
    keep = [
        i
        for i in pool
        if i.fields.get("difficulty") == 1 and family.full_prompt(i) not in eval_texts
    ][:n]
    write_jsonl(keep, path)
    print(f"training instructions: {len(keep)} -> {path}")
    return path


def run_args(
    model: str,
    tasks: str,
    modes: str,
    limit: int,
    runs: int,
    out: Path,
    temperature: float,
    max_new_tokens: int,
) -> list[str]:
    return [
        "run",
        "--model",
        model,
        "--tasks",
        tasks,
        "--modes",
        modes,
        "--limit",
        str(limit),
        "--runs",
        str(runs),
        "--temperature",
        str(temperature),
        "--max-new-tokens",
        str(max_new_tokens),
        "--out",
        str(out),
        "--no-progress",
    ]


def fmt(ci: tuple, pct: bool = True) -> str:
    point, lo, hi = ci
    if point is None:
        return "–"
    k = 100 if pct else 1
    return f"{k * point:.1f} [{k * lo:.1f}, {k * hi:.1f}]"


def summarise(work: Path, families: list[str], out_dir: Path, n_boot: int) -> None:
    """Figures with 95% intervals (instructions resampled; base vs trained paired)."""
    rows, table = {}, []

    def convs(run: str, family: str, mode: str) -> list[Conversation]:
        _, cs = load_run(work / run)
        return [c for c in cs if c.family == family and c.mode == mode]

    def p(cs: list[Conversation]) -> float | None:
        v = performance(cs)["P"]
        return None if v is None else v / 100

    stats = {
        "P": p,
        "non-answer rate (underspecified turns)": non_answer_rate,
        "premature-answer rate (underspecified turns)": premature_answer_rate,
        "over-clarification rate (fully specified turns)": over_clarification_rate,
    }
    for family in families:
        for mode in ("full", "concat", "sharded"):
            base = convs(f"base-{family}", family, mode)
            icpo = convs(f"icpo-{family}", family, mode) if family == "math" else []
            groups = [base, icpo] if icpo else [base]
            for name, fn in stats.items():
                ci = bootstrap_ci(groups, fn, n_boot=n_boot)
                key = f"{family}/{mode}/{name}"
                rows[key] = ci
                table.append(
                    f"| {family} | {mode} | {name} | {fmt(ci['0'])} | "
                    f"{fmt(ci['1']) if icpo else '–'} | {fmt(ci['1-0']) if icpo else '–'} |"
                )
    # Degradation sharded / full per family and model, with intervals.
    for family in families:
        for tag in ("base", "icpo") if family == "math" else ("base",):
            both = convs(f"{tag}-{family}", family, "full")
            both += convs(f"{tag}-{family}", family, "sharded")
            # One group: a resampled instruction brings its full and its sharded runs along.
            ci = bootstrap_ci([both], degradation, n_boot=n_boot)["0"]
            rows[f"{family}/{tag}/degradation sharded÷full"] = ci
            table.append(
                f"| {family} | sharded÷full | degradation ({tag}) | {fmt(ci, pct=False)} | | |"
            )
    header = (
        "| family | mode | figure | base (95% CI) | ICPO (95% CI) | ICPO − base (95% CI) |\n"
        "|---|---|---|---|---|---|"
    )
    (out_dir / "summary.md").write_text(header + "\n" + "\n".join(table) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    # ICPO Fig. 1: non-answer share by conversation progress (sharded).
    lines = ["family,model,progress_bucket,non_answer_share"]
    for family in families:
        for tag in ("base", "icpo") if family == "math" else ("base",):
            prog = non_answer_share_by_progress(convs(f"{tag}-{family}", family, "sharded"))
            for i, share in enumerate(prog):
                bucket = f"{20 * i}-{20 * (i + 1)}%"
                lines.append(f"{family},{tag},{bucket},{'' if share is None else f'{share:.3f}'}")
    (out_dir / "progress.csv").write_text("\n".join(lines) + "\n")
    print((out_dir / "summary.md").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", default="work/fidelity", help="large outputs (not committed)")
    ap.add_argument("--out", default="results/fidelity", help="small committed results")
    ap.add_argument("--families", default="math", help="families for (a); (b) uses math")
    ap.add_argument("--eval-limit", type=int, default=100, help="held-out instructions")
    ap.add_argument("--runs", type=int, default=5, help="sampled runs per instruction")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--train-instructions", type=int, default=100)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks every step")
    a = ap.parse_args()
    if a.quick:
        a.eval_limit, a.runs, a.train_instructions, a.bootstrap = 4, 2, 6, 100
        a.work, a.out = a.work + "-quick", a.out + "-quick"
    work, out_dir = ROOT / a.work, ROOT / a.out
    work.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    families = [f.strip() for f in a.families.split(",") if f.strip()]
    trained_dir = ROOT / (TRAINED_DIR + ("-quick" if a.quick else ""))
    trained = f"hf/{trained_dir.relative_to(ROOT)}"

    # (b, first because it decides whether the long evaluations are worth it) training data.
    eval_insts = load_tasks("math", limit=a.eval_limit)
    eval_texts = {get_family("math").full_prompt(i) for i in eval_insts}
    train_tasks = training_tasks(work, eval_texts, a.train_instructions)
    # Greedy: one conversation per (instruction, mode) is enough, GRPO samples its own replies.
    tasks = str(train_tasks.relative_to(ROOT))
    n = a.train_instructions
    sh(*run_args(BASE, tasks, "full,sharded", n, 1, work / "base-train", 0.0, a.max_new_tokens))
    export = work / "export"
    if not (export / "export.json").exists():
        sh("export", str(work / "base-train"), "--format", "jsonl", "--augment", "-o", str(export))
    if not (trained_dir / "icpo_train.json").exists():
        extra = ["--max-steps", "2"] if a.quick else []
        sh(
            "train",
            "--config",
            str(RECIPE),
            "--data",
            str(export),
            "--output-dir",
            str(trained_dir),
            *extra,
        )
    # (a) and (b): base on every family; trained on math (held-out instructions).
    sampling = (a.temperature, a.max_new_tokens)
    for family in families:
        out = work / f"base-{family}"
        sh(*run_args(BASE, family, MODES, a.eval_limit, a.runs, out, *sampling))
    sh(*run_args(trained, "math", MODES, a.eval_limit, a.runs, work / "icpo-math", *sampling))

    runs = [str(work / f"base-{f}") for f in families] + [str(work / "icpo-math")]
    sh("leaderboard", *runs, "-o", str(out_dir / "leaderboard.csv"))
    sh("report", *runs, "-o", str(out_dir / "report.html"), "--max-transcripts", "40")
    log = trained_dir / "train_log.jsonl"
    if log.exists():
        (out_dir / "train_log.jsonl").write_text(log.read_text())
        (out_dir / "icpo_train.json").write_text((trained_dir / "icpo_train.json").read_text())
    summarise(work, families, out_dir, a.bootstrap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
