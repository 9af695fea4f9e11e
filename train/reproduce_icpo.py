"""Reproduce the ICPO paper's findings with the embedded model, on CPU, end to end.

    .venv/bin/python train/reproduce_icpo.py            # everything (hours on 2 cores: README)
    .venv/bin/python train/reproduce_icpo.py --quick    # a smoke run of every step

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
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from icpo_eval.compare import (  # noqa: E402
    FIGURES,
    STRICT_NON_ANSWER,
    category_shares,
    formatted,
    interval_table,
    markdown,
    strict_non_answer_rate,
)
from icpo_eval.families import get_family  # noqa: E402
from icpo_eval.metrics import non_answer_share_by_progress, turns_by_progress  # noqa: E402
from icpo_eval.records import Conversation  # noqa: E402
from icpo_eval.store import load_run  # noqa: E402
from icpo_eval.tasksets import load_tasks, write_jsonl  # noqa: E402

BASE = "local/smollm2"
RECIPE = ROOT / "train" / "smollm2-cpu-30min.yaml"
TRAINED_DIR = "checkpoints/smollm2-icpo"
MODES = "full,concat,sharded"


def rel(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _command(args: list[str] | tuple[str, ...], note: str = "") -> list[str]:
    """The icpo-eval command line for ``args``, echoed first."""
    print("$ icpo-eval " + " ".join(args) + note, flush=True)
    return [sys.executable, "-m", "icpo_eval", *args]


def sh(*args: str) -> None:
    """Run one icpo-eval command from the repository root, echoing it and its duration."""
    cmd = _command(args)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def sh_parallel(commands: list[list[str]], jobs: int) -> None:
    """Run icpo-eval commands ``jobs`` at a time, each with ``cores // jobs`` torch threads.

    A 135M model's per-token work is too small for two threads to split well, and a process
    also spends time in Python between forward passes, so two single-threaded evaluations on 2
    cores generated about 1.1x the tokens per second of one two-threaded evaluation here (and
    more prompt tokens). More useful still: every evaluation makes progress from the start."""
    if jobs <= 1:
        for args in commands:
            sh(*args)
        return
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    pending, running = list(commands), []
    start = time.perf_counter()
    while pending or running:
        while pending and len(running) < jobs:
            cmd = _command(pending.pop(0), f"  (in parallel, {threads} thread(s))")
            running.append(subprocess.Popen(cmd, cwd=ROOT, env=env))
        time.sleep(2)
        for proc in [p for p in running if p.poll() is not None]:
            running.remove(proc)
            if proc.returncode:
                for other in running:
                    other.terminate()
                    other.wait()
                raise subprocess.CalledProcessError(proc.returncode, proc.args)
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
    batch_size: int = 16,
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
        "--batch-size",
        str(batch_size),
        "--no-progress",
    ]


def publish(runs: list[Path], out_dir: Path, n_boot: int) -> None:
    """The leaderboard and the HTML report of ``runs`` (the base model the baseline)."""
    # Relative paths (the commands run from the repository root): the report names its sources.
    names = [rel(r) for r in runs]
    sh("leaderboard", *names, "-o", rel(out_dir / "leaderboard.csv"))
    sh(
        "report",
        *names,
        "-o",
        rel(out_dir / "report.html"),
        "--max-transcripts",
        "40",
        "--baseline",
        BASE,
        "--bootstrap",
        str(n_boot),
    )


def summarise(
    runs: list[Path],
    out_dir: Path,
    n_boot: int,
    log: Path | None = None,
    more_logs: dict[str, tuple[Path | None, dict[str, str]]] | None = None,
) -> list:
    """``summary.md`` / ``summary.json`` (figures with 95% intervals over instructions, the
    trained model paired against the base on the same resamples; what the replies were) and
    ``progress.csv`` (non-answer share by conversation progress in sharded mode, ICPO Fig. 1).
    ``log``: the single-turn training log; ``more_logs``: other training logs by title, each
    with its columns (:data:`TRAIN_COLUMNS`' form). Returns the estimates."""
    convs = [c for r in runs for c in load_run(r)[1]]
    # The audit figure: the rule judge reads only digits, so a non-answer that states a number
    # in words ("Omar has two marbles.") may be a guess; this rate counts those as answers.
    figures = (*FIGURES, (STRICT_NON_ANSWER, strict_non_answer_rate, 100.0))
    estimates = interval_table(convs, baseline=BASE, n_boot=n_boot, figures=figures)
    rows, cats = formatted(estimates), category_shares(convs)
    (out_dir / "summary.md").write_text(
        f"## Figures with 95% bootstrap intervals ({n_boot} resamples of instructions)\n\n"
        + markdown(rows)
        + "\n## Reply categories (% of assistant turns)\n\n"
        + markdown(cats)
        + (
            "\n## Training (means over 10-step windows)\n\n" + training_table(log)
            if log is not None and log.exists()
            else ""
        )
        + "".join(
            f"\n## Training, {title} (means over 10-step windows)\n\n"
            + training_table(path, columns=columns)
            for title, (path, columns) in (more_logs or {}).items()
            if path is not None and path.exists()
        )
    )
    (out_dir / "summary.json").write_text(
        json.dumps([dataclasses.asdict(e) for e in estimates], indent=1) + "\n"
    )
    lines = ["family,model,progress_bucket,non_answer_share,turns"]
    for (family, model), cs in sorted(_by_family_and_model(convs).items()):
        shares = non_answer_share_by_progress(cs)
        counts = turns_by_progress(cs)
        for i, (share, n) in enumerate(zip(shares, counts, strict=True)):
            bucket = f"{20 * i}-{20 * (i + 1)}%"
            cell = "" if share is None else f"{share:.3f}"
            lines.append(f"{family},{model},{bucket},{cell},{n}")
    (out_dir / "progress.csv").write_text("\n".join(lines) + "\n")
    print((out_dir / "summary.md").read_text())
    return estimates


TRAIN_COLUMNS = {
    "reward, fully specified": "icpo/reward_fully",
    "reward, underspecified": "icpo/reward_under",
    "non-answer rate, underspecified": "icpo/non_answer_under",
    "over-clarification, fully specified": "icpo/over_clarification",
    "KL": "kl",
    "completion tokens": "completions/mean_length",
    "groups with one reward": "frac_reward_zero_std",
}


def training_table(log: Path, window: int = 10, columns: dict[str, str] | None = None) -> str:
    """The training log as a Markdown table: each column's mean over windows of ``window``
    steps (a step logs a figure only when its batch had such prompts)."""
    columns = columns or TRAIN_COLUMNS
    steps = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    lines = [
        "| steps | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for start in range(0, len(steps), window):
        chunk = steps[start : start + window]
        cells = []
        for key in columns.values():
            vals = [s[key] for s in chunk if s.get(key) is not None]
            cells.append(f"{sum(vals) / len(vals):.2f}" if vals else "–")
        span = f"{chunk[0]['step']}-{chunk[-1]['step']}"
        lines.append(f"| {span} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _by_family_and_model(convs: list[Conversation]) -> dict[tuple[str, str], list[Conversation]]:
    out: dict[tuple[str, str], list[Conversation]] = {}
    for c in convs:
        out.setdefault((c.family, c.model), []).append(c)
    return out


def protocol_arguments(ap: argparse.ArgumentParser, name: str) -> None:
    """The flags every reproduction shares: where its outputs go (``work/<name>`` and
    ``results/<name>``), the held-out protocol, the training set's size and ``--quick``."""
    ap.add_argument("--work", default=f"work/{name}", help="large outputs (not committed)")
    ap.add_argument("--out", default=f"results/{name}", help="small committed results")
    ap.add_argument("--eval-limit", type=int, default=100, help="held-out instructions")
    ap.add_argument("--runs", type=int, default=5, help="sampled runs per instruction")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--train-instructions", type=int, default=100)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="local batch of each evaluation (32: ~1.25x the tokens/s of 16 on 2 cores)",
    )
    ap.add_argument(
        "--jobs", type=int, default=2, help="evaluations run at once (torch threads split)"
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks every step")


def apply_quick(a: argparse.Namespace) -> tuple[Path, Path]:
    """With ``--quick``, tiny sizes and ``-quick`` folders; the work and result folders, made."""
    if a.quick:
        a.eval_limit, a.runs, a.train_instructions, a.bootstrap = 4, 2, 6, 100
        a.work, a.out = a.work + "-quick", a.out + "-quick"
    work, out_dir = ROOT / a.work, ROOT / a.out
    work.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    return work, out_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    protocol_arguments(ap, "fidelity")
    ap.add_argument("--families", default="math,database", help="families for (a); (b): math")
    a = ap.parse_args()
    work, out_dir = apply_quick(a)
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
    sampling = (a.temperature, a.max_new_tokens, a.batch_size)
    evals = [
        run_args(BASE, f, MODES, a.eval_limit, a.runs, work / f"base-{f}", *sampling)
        for f in families
    ]
    evals.append(
        run_args(trained, "math", MODES, a.eval_limit, a.runs, work / "icpo-math", *sampling)
    )
    sh_parallel(evals, a.jobs)

    runs = [work / f"base-{f}" for f in families] + [work / "icpo-math"]
    publish(runs, out_dir, a.bootstrap)
    log = trained_dir / "train_log.jsonl"
    if log.exists():
        (out_dir / "train_log.jsonl").write_text(log.read_text())
        # Paths relative to the repository: the committed copy names no local directory.
        summary = (trained_dir / "icpo_train.json").read_text().replace(f"{ROOT}/", "")
        (out_dir / "icpo_train.json").write_text(summary)
    summarise(runs, out_dir, a.bootstrap, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
