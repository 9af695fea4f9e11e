"""Offline against online ICPO with the embedded model, on CPU, end to end (issue 15).

    .venv/bin/python train/reproduce_online.py            # everything (hours on 2 cores: README)
    .venv/bin/python train/reproduce_online.py --quick    # a smoke run of every step

Three models on one held-out protocol (the first ``--eval-limit`` math instructions of the
committed set, ``--runs`` sampled runs each, full, concat and sharded mode, temperature 0.7, rule
simulator and judge):

- ``local/smollm2``: the base model;
- ``hf/checkpoints/smollm2-icpo``: offline ICPO, the paper's single-turn q / q* training
  (``train/smollm2-cpu-30min.yaml``, as ``train/reproduce_icpo.py`` trains it);
- ``hf/checkpoints/smollm2-icpo-online``: online ICPO, conversation rollouts
  (``train/smollm2-cpu-online.yaml``): the policy plays whole sharded and full conversations
  against the rule simulator on the same training instructions.

Both trainings use the instructions ``train/reproduce_icpo.py`` builds (level-1 math from
another generator seed, none whose text is in the evaluation set) and a 28-minute budget.
Every step skips what is done (runs resume, an existing export or checkpoint is kept), so the
script can be stopped and started again. Large outputs go to ``--work``; the small results to
``results/icpo-online/``: ``leaderboard.csv`` (a row per model and mode), ``summary.md`` /
``summary.json`` (every figure with a 95% bootstrap interval, paired against the base model,
and the issue's targets, each met or missed), ``progress.csv`` (ICPO Fig. 1), ``report.html``
and both training logs. Arms evaluated in separate runs (``--models base,offline`` in one
folder, ``--models base,online`` in another) join on one leaderboard with
``train/combine_results.py``, which checks that their base runs are the same measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "train"))

from reproduce_icpo import (  # noqa: E402
    BASE,
    MODES,
    RECIPE,
    TRAIN_COLUMNS,
    TRAINED_DIR,
    apply_quick,
    protocol_arguments,
    publish,
    rel,
    run_args,
    sh,
    sh_parallel,
    summarise,
    training_tasks,
)

from icpo_eval.compare import Estimate  # noqa: E402
from icpo_eval.families import get_family  # noqa: E402
from icpo_eval.tasksets import load_tasks  # noqa: E402

ONLINE_RECIPE = ROOT / "train" / "smollm2-cpu-online.yaml"

#: The training log of conversation rollouts, as a table (means over 10-step windows).
ONLINE_COLUMNS = {
    "return": "reward",
    "non-answer rate, underspecified turns": "icpo/non_answer_under",
    "over-clarification, fully specified turns (sharded)": "icpo/over_clarification",
    "over-clarification (full)": "icpo/over_clarification_single",
    "correct (sharded)": "icpo/correct",
    "correct (full)": "icpo/correct_single",
    "turns": "icpo/turns",
    "non-answers stating a number in words": "icpo/non_answer_number_words",
    "KL": "kl",
    "policy tokens": "completions/mean_length",
    "groups with one return": "frac_reward_zero_std",
}


def recipe_value(recipe: Path, key: str) -> str | None:
    """A recipe's ``key`` as text (None when the file is missing, malformed or names none)."""
    import yaml

    try:
        value = (yaml.safe_load(recipe.read_text()) or {}).get(key)
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return str(value) if value else None


def first_stage(online_recipe: Path) -> Path | None:
    """The single-turn recipe whose checkpoint the online recipe starts from, if one is committed.

    An online recipe whose ``model`` is ``hf/D`` for the ``output_dir`` D of a single-turn recipe
    under ``train/`` (``train/smollm2-cpu-online-warm.yaml``) is trained in two stages: that
    recipe on the offline export first, then the conversation rollouts from its checkpoint.
    """
    model = recipe_value(online_recipe, "model") or ""
    if not model.startswith("hf/"):
        return None
    for recipe in sorted((ROOT / "train").glob("*.yaml")):
        if (
            recipe != online_recipe
            and recipe_value(recipe, "output_dir") == model[3:]
            and recipe_value(recipe, "rollout") != "conversation"
        ):
            return recipe
    return None


def targets(estimates: list[Estimate], models: list[str]) -> str:
    """The issue's targets for each trained model, met or missed, from the paired estimates."""

    def get(model: str, mode: str, figure: str) -> Estimate | None:
        return next(
            (
                e
                for e in estimates
                if e.model == model
                and e.family == "math"
                and e.mode == mode
                and e.figure.startswith(figure)
            ),
            None,
        )

    def fmt(e: Estimate | None, diff: bool = False) -> str:
        if e is None or e.value is None:
            return "–"
        if diff:
            if e.diff is None:
                return "–"
            return f"{e.diff:+.1f} [{e.diff_lo:+.1f}, {e.diff_hi:+.1f}]"
        return f"{e.value:.1f} [{e.lo:.1f}, {e.hi:.1f}]"

    lines = [
        "| model | target | measured | paired difference from base | met |",
        "|---|---|---|---|---|",
    ]
    for m in models:
        na = get(m, "sharded", "non-answer rate, underspecified")
        oc_s = get(m, "sharded", "over-clarification")
        oc_f = get(m, "full", "over-clarification")
        p_s = get(m, "sharded", "P")
        p_f = get(m, "full", "P")
        base_oc = get(BASE, "sharded", "over-clarification")
        checks = [
            (
                "non-answer rate, underspecified turns ≥ base + 40 points, lower bound included",
                na,
                na is not None and na.diff_lo is not None and na.diff_lo >= 40,
            ),
            (
                "over-clarification, fully specified turns of sharded conversations ≤ base"
                + (f" ({base_oc.value:.1f}%)" if base_oc and base_oc.value is not None else ""),
                oc_s,
                oc_s is not None and oc_s.diff is not None and oc_s.diff <= 0,
            ),
            (
                "over-clarification in full mode ≤ 20%",
                oc_f,
                oc_f is not None and oc_f.value is not None and oc_f.value <= 20,
            ),
            (
                "P sharded ≥ base",
                p_s,
                p_s is not None and p_s.diff is not None and p_s.diff >= 0,
            ),
            (
                "P full within noise of base (interval of the difference contains 0 or above)",
                p_f,
                p_f is not None and p_f.diff_hi is not None and p_f.diff_hi >= 0,
            ),
        ]
        for name, e, ok in checks:
            lines.append(
                f"| {m} | {name} | {fmt(e)} | {fmt(e, True)} | {'met' if ok else 'missed'} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    protocol_arguments(ap, "icpo-online")
    ap.add_argument(
        "--models",
        default="base,offline,online",
        help="which of base, offline, online to train and evaluate (base is always evaluated: "
        "every difference is paired against it)",
    )
    ap.add_argument(
        "--online-recipe",
        default=str(ONLINE_RECIPE.relative_to(ROOT)),
        help="the online ICPO recipe; its output_dir is the online model (its name must "
        "contain 'online'), e.g. train/smollm2-cpu-online-lr8e-5.yaml",
    )
    a = ap.parse_args()
    wanted = {m.strip() for m in a.models.split(",") if m.strip()} | {"base"}
    unknown = wanted - {"base", "offline", "online"}
    if unknown:
        ap.error(f"--models: unknown {sorted(unknown)}")
    online_recipe = (ROOT / a.online_recipe).resolve()
    online_name = recipe_value(online_recipe, "output_dir")
    if online_name is None or "online" not in Path(online_name).name:
        ap.error(f"--online-recipe: {a.online_recipe}: output_dir must name an 'online' model")
    work, out_dir = apply_quick(a)
    suffix = "-quick" if a.quick else ""
    offline_dir, online_dir = ROOT / (TRAINED_DIR + suffix), ROOT / (online_name + suffix)
    offline, online = (f"hf/{d.relative_to(ROOT)}" for d in (offline_dir, online_dir))
    extra = ["--max-steps", "2"] if a.quick else []
    # A warm-started online recipe: its single-turn first stage is trained (not evaluated) too.
    stage = first_stage(online_recipe) if "online" in wanted else None
    stage_dir = ROOT / (recipe_value(stage, "output_dir") + suffix) if stage else None

    # Training instructions, held apart from the evaluation set (as reproduce_icpo.py).
    eval_insts = load_tasks("math", limit=a.eval_limit)
    eval_texts = {get_family("math").full_prompt(i) for i in eval_insts}
    train_tasks = training_tasks(work, eval_texts, a.train_instructions)
    tasks, n = rel(train_tasks), a.train_instructions

    # Offline ICPO: the base model's greedy conversations on them, exported with q*, trained.
    export = work / "export"
    if ("offline" in wanted or stage) and not (export / "export.json").exists():
        sh(*run_args(BASE, tasks, "full,sharded", n, 1, work / "base-train", 0.0, a.max_new_tokens))
        sh("export", str(work / "base-train"), "--format", "jsonl", "--augment", "-o", str(export))

    def train(recipe: Path, out: Path, *args: str) -> None:
        """Train ``recipe`` into ``out`` unless a finished checkpoint is there already."""
        if not (out / "icpo_train.json").exists():
            sh("train", "--config", str(recipe), "--output-dir", str(out), *args, *extra)

    if "offline" in wanted:
        train(RECIPE, offline_dir, "--data", str(export))
    if stage:
        train(stage, stage_dir, "--data", str(export))
    # Online ICPO: conversations on the same instructions, played during training.
    if "online" in wanted:
        start = ["--model", f"hf/{rel(stage_dir)}"] if stage else []
        train(online_recipe, online_dir, "--tasks", tasks, *start)

    sampling = (a.temperature, a.max_new_tokens, a.batch_size)
    models = {
        name: model
        for name, model in (("base", BASE), ("offline", offline), ("online", online))
        if name in wanted
    }
    # The online run is named after its checkpoint ("online", "online-lr8e-5"), so that a
    # variant never resumes another recipe's conversations.
    online_run = Path(online_name).name.replace("smollm2-icpo-", "")
    runs = {name: work / f"{online_run if name == 'online' else name}-math" for name in models}
    sh_parallel(
        [
            run_args(model, "math", MODES, a.eval_limit, a.runs, runs[name], *sampling)
            for name, model in models.items()
        ],
        a.jobs,
    )

    publish(list(runs.values()), out_dir, a.bootstrap)
    logs = {}
    named = (("offline", offline_dir), ("online", online_dir))
    checkpoints = [(name, d) for name, d in named if name in wanted]
    for name, d in checkpoints + ([("online_stage1", stage_dir)] if stage else []):
        log = d / "train_log.jsonl"
        if log.exists():
            (out_dir / f"train_log_{name}.jsonl").write_text(log.read_text())
            summary = (d / "icpo_train.json").read_text().replace(f"{ROOT}/", "")
            (out_dir / f"icpo_train_{name}.json").write_text(summary)
            logs[name] = log
    estimates = summarise(
        list(runs.values()),
        out_dir,
        a.bootstrap,
        logs.get("offline"),
        more_logs={
            "online ICPO, first stage (single-turn)": (logs.get("online_stage1"), TRAIN_COLUMNS),
            "online ICPO (conversation rollouts)": (logs.get("online"), ONLINE_COLUMNS),
        },
    )
    trained = [models[name] for name in ("offline", "online") if name in models]
    table = targets(estimates, trained)
    text = (out_dir / "summary.md").read_text()
    (out_dir / "summary.md").write_text(
        "## Targets (held-out, paired against the base model)\n\n" + table + "\n" + text
    )
    print(table)
    print(json.dumps({"results": rel(out_dir)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
