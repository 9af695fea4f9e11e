"""The ``icpo-eval`` command: parses, calls, prints. No logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from icpo_eval import __version__
from icpo_eval.errors import IcpoError

if TYPE_CHECKING:
    from icpo_eval.distributed import WorkerStats

# Keep the run offline and quiet unless the user asked otherwise.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {v}")
    return v


def _batch_size(text: str) -> int | None:
    """``--batch-size``: a positive integer, or ``auto`` (None: the backend picks)."""
    return None if text.strip().lower() == "auto" else _positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icpo-eval", description=__doc__)
    p.add_argument("--version", action="version", version=f"icpo-eval {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="simulate, judge and store conversations")
    r.add_argument(
        "--model",
        required=True,
        help="local/smollm2, hf/<checkpoint path> or a litellm provider/model "
        "(openai/gpt-4o-mini, hosted_vllm/<id> with --api-base, ollama_chat/<id>, ...)",
    )
    r.add_argument(
        "--tasks",
        default="math",
        help="comma-separated sources: family names, FILE.jsonl, lic:FILE or hf:NAME[:SPLIT]",
    )
    r.add_argument("--modes", default="full,concat,sharded")
    r.add_argument("--runs", type=_positive_int, default=1, help="runs per instruction")
    r.add_argument("--limit", type=_positive_int, default=None, help="first K per task source")
    r.add_argument(
        "--simulator", default="rule", help="rule, llm:MODEL or a profile name from simulators/"
    )
    r.add_argument("--judge", default="rule", help="rule or llm:MODEL")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--max-turns",
        type=_positive_int,
        default=None,
        help="cap on assistant turns (default: the instruction's shard count + 2)",
    )
    r.add_argument(
        "--grader",
        default="rule",
        help="how summary answers are graded: rule (offline approximation) or llm:MODEL",
    )
    r.add_argument(
        "--strict",
        action="store_true",
        help="refuse task records of tasks icpo-eval does not have (default: skip, saying so)",
    )
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--max-new-tokens", type=_positive_int, default=256)
    r.add_argument(
        "--batch-size",
        type=_batch_size,
        default=None,
        metavar="B|auto",
        help="local model: conversations decoded together (default auto: 32 on a CPU, on a GPU "
        "as many as its free memory holds keys and values for)",
    )
    r.add_argument("--out", default=None, help="run directory (default results/<model>)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument(
        "--sandbox",
        choices=["auto", "strict"],
        default="auto",
        help="strict: refuse to run model-written code without bubblewrap's kernel boundary "
        "(auto: the strongest available, saying so when it is the weak fallback)",
    )
    r.add_argument(
        "--allow-train-overlap",
        action="store_true",
        help="evaluate an ICPO checkpoint on instructions it was trained on (refused otherwise)",
    )
    dist = r.add_argument_group("more than one process or machine (Ray)")
    dist.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="run the conversations on N Ray actors, each with its own backend (needs "
        "pip install 'icpo-eval[ray]'); --concurrency is then shared: C // N per worker",
    )
    dist.add_argument(
        "--ray-address",
        default=None,
        help="the Ray cluster to join (as printed by ray start --head; default: $RAY_ADDRESS, "
        "else a local Ray instance for this run)",
    )
    api = r.add_argument_group("API models, LLM simulator and LLM judge (litellm)")
    api.add_argument(
        "--concurrency", type=_positive_int, default=8, help="API requests in flight (each role)"
    )
    api.add_argument(
        "--api-base",
        action="append",
        default=[],
        help="base URL of the model's server; repeat or comma-separate for replicas",
    )
    api.add_argument("--simulator-api-base", action="append", default=[])
    api.add_argument("--judge-api-base", action="append", default=[])
    api.add_argument("--grader-api-base", action="append", default=[])
    api.add_argument("--no-cache", action="store_true", help="bypass the response cache")
    api.add_argument("--timeout", type=float, default=120.0, help="seconds per API attempt")
    api.add_argument("--max-attempts", type=_positive_int, default=6, help="tries per API call")
    api.add_argument("--retry-wait", type=float, default=1.0, help="backoff unit (seconds)")
    api.add_argument(
        "--transport",
        choices=["auto", "litellm", "direct"],
        default="auto",
        help="direct: OpenAI protocol over aiohttp, skipping litellm's per-call overhead "
        "(auto: direct for hosted_vllm/ with --api-base, litellm otherwise)",
    )

    lb = sub.add_parser("leaderboard", help="one CSV row per (model, family, mode)")
    lb.add_argument(
        "results",
        nargs="*",
        help="run or results directories (default: your runs under results/, without the "
        "reference runs in results/reference/)",
    )
    lb.add_argument("-o", "--output", default="results/leaderboard.csv")

    rp = sub.add_parser("report", help="one self-contained HTML report: table, plots, transcripts")
    rp.add_argument(
        "results", nargs="*", help="run or results directories (default: as for leaderboard)"
    )
    rp.add_argument("-o", "--output", default="report.html")
    rp.add_argument("--max-transcripts", type=_positive_int, default=200)
    rp.add_argument("--baseline", default=None, help="model to pair the other models against")
    rp.add_argument(
        "--bootstrap", type=int, default=1000, help="resamples for the intervals (0: none)"
    )

    rj = sub.add_parser(
        "rejudge",
        help="judge a stored run again (categories, scores, rewards) into a new run folder",
    )
    rj.add_argument("run_dir")
    rj.add_argument("--judge", required=True, help="rule or llm:MODEL")
    rj.add_argument("--out", default=None, help="new run folder (default RUN-rejudged-JUDGE)")
    rj.add_argument(
        "--tasks", default=None, help="the run's task source, when it is no longer where it was"
    )
    rj.add_argument("--grader", default=None, help="regrade summary answers (default: the run's)")
    rj.add_argument("--judge-api-base", action="append", default=[])
    rj.add_argument("--grader-api-base", action="append", default=[])
    rj.add_argument("--concurrency", type=_positive_int, default=8, help="conversations at once")
    rj.add_argument("--no-cache", action="store_true", help="bypass the response cache")
    rj.add_argument("--timeout", type=float, default=120.0, help="seconds per API attempt")
    rj.add_argument("--max-attempts", type=_positive_int, default=6, help="tries per API call")

    ex = sub.add_parser("export", help="every judged assistant turn of a run as reward data")
    ex.add_argument("run_dir")
    ex.add_argument("--format", default="jsonl", choices=["jsonl", "hf", "verl"])
    ex.add_argument("--augment", action="store_true", help="add full and q* prompts per task")
    ex.add_argument("--tasks", default=None, help="task set the run used (default: run.json's)")
    ex.add_argument(
        "--recipe",
        default=None,
        help="verl only: the recipe YAML whose selection keys (sources, underspecified_share, "
        "max_prompt_tokens, max_prompts, seed) pick the rows, as the TRL trainer would "
        "(default: a recipe's defaults)",
    )
    ex.add_argument(
        "--multi-turn",
        action="store_true",
        help="verl only: one row per instruction opening at shard 1, for the multi-turn "
        "interaction (train/verl/)",
    )
    ex.add_argument("-o", "--output", required=True, help="output directory (new or empty)")

    tr = sub.add_parser("train", help="ICPO fine-tuning (TRL GRPO) on exported reward data")
    tr.add_argument("--config", required=True, help="recipe YAML, e.g. train/smollm2-cpu.yaml")
    tr.add_argument("--data", default=None, help="export directory (overrides the recipe's)")
    tr.add_argument(
        "--tasks",
        default=None,
        help="conversation rollouts: training instructions (family or task file; overrides)",
    )
    tr.add_argument("--output-dir", default=None, help="checkpoint directory (overrides)")
    tr.add_argument(
        "--model", default=None, help="model to start from: local/smollm2 or hf/PATH (overrides)"
    )
    tr.add_argument("--max-steps", type=_positive_int, default=None, help="override the recipe")

    t = sub.add_parser("tasks", help="list, show or generate task sets")
    tsub = t.add_subparsers(dest="tasks_command", required=True)
    tsub.add_parser("list", help="task families and their committed sets")
    ts = tsub.add_parser("show", help="print one task set's first instructions")
    ts.add_argument("name", help="family name, FILE.jsonl, lic:FILE or hf:NAME[:SPLIT]")
    ts.add_argument("--n", type=_positive_int, default=3)
    tg = tsub.add_parser("generate", help="generate a task set")
    tg.add_argument("family")
    tg.add_argument("--n", type=_positive_int, required=True)
    tg.add_argument("--seed", type=int, default=0)
    tg.add_argument("-o", "--output", required=True)
    return p


def _urls(values: list[str]) -> list[str]:
    """--api-base values: repeated and/or comma-separated."""
    return [u.strip() for v in values for u in v.split(",") if u.strip()]


def cmd_run(args: argparse.Namespace) -> int:
    from icpo_eval.leaderboard import summary_table
    from icpo_eval.records import RunSpec
    from icpo_eval.runner import run
    from icpo_eval.store import load_run

    out = args.out or str(Path("results") / args.model.replace("/", "__"))
    spec = RunSpec(
        model=args.model,
        tasks=args.tasks,
        modes=[m.strip() for m in args.modes.split(",") if m.strip()],
        runs=args.runs,
        limit=args.limit,
        simulator=args.simulator,
        judge=args.judge,
        seed=args.seed,
        max_turns=args.max_turns,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        out=out,
        concurrency=args.concurrency,
        api_base=_urls(args.api_base),
        simulator_api_base=_urls(args.simulator_api_base),
        judge_api_base=_urls(args.judge_api_base),
        grader=args.grader,
        grader_api_base=_urls(args.grader_api_base),
        strict=args.strict,
        cache=not args.no_cache,
        timeout=args.timeout,
        max_attempts=args.max_attempts,
        retry_wait=args.retry_wait,
        transport=args.transport,
        allow_train_overlap=args.allow_train_overlap,
        sandbox=args.sandbox,
        workers=args.workers,
        ray_address=args.ray_address,
    )
    result = run(spec, progress=not args.no_progress)
    _, convs = load_run(out)
    print(f"{result.written} conversations written, {result.skipped} already done -> {out}")
    print(summary_table(convs))
    if result.workers:
        print(worker_table(result.workers))
    failed = [c for c in result.conversations if c.error is not None]
    if result.written and len(failed) == result.written:
        print(
            f"icpo-eval: error: all {result.written} conversations failed (first: "
            f"{failed[0].error})",
            file=sys.stderr,
        )
        return 1
    return 0


def worker_table(workers: list[WorkerStats]) -> str:
    """Per-worker throughput of a ``--workers`` run: one line per worker."""
    lines = [f"{'worker':>6}  {'node':<15} {'pid':>7}  {'convs':>6}  {'seconds':>8}  conv/s"]
    for w in workers:
        rate = w.conversations / w.seconds if w.seconds > 0 else 0.0
        lost = f"  ({w.lost_chunks} chunks lost and re-run)" if w.lost_chunks else ""
        lines.append(
            f"{w.index:>6}  {w.node:<15} {w.pid:>7}  {w.conversations:>6}  {w.seconds:>8.1f}  "
            f"{rate:6.2f}{lost}"
        )
    return "\n".join(lines)


def _result_roots(named: list[str]) -> list[str] | list[Path]:
    """The folders named on the command line, else the user's own runs under results/."""
    from icpo_eval.leaderboard import user_runs

    return named or user_runs()


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from icpo_eval.leaderboard import build

    df = build(_result_roots(args.results))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df.to_string(index=False))
    print(f"-> {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from icpo_eval.report import write_report

    if args.bootstrap < 0:
        raise IcpoError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    out = write_report(
        _result_roots(args.results),
        args.output,
        max_transcripts=args.max_transcripts,
        baseline=args.baseline,
        n_boot=args.bootstrap,
    )
    print(f"-> {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


def cmd_rejudge(args: argparse.Namespace) -> int:
    from icpo_eval.leaderboard import summary_table
    from icpo_eval.rejudge import rejudge
    from icpo_eval.store import load_run

    result = rejudge(
        args.run_dir,
        args.judge,
        out=args.out,
        tasks=args.tasks,
        spec_overrides={
            **({"grader": args.grader} if args.grader else {}),
            "grader_api_base": _urls(args.grader_api_base),
            "judge_api_base": _urls(args.judge_api_base),
            "concurrency": args.concurrency,
            "cache": not args.no_cache,
            "timeout": args.timeout,
            "max_attempts": args.max_attempts,
        },
    )
    changed = sum(result.changes.values())
    print(
        f"{result.written} conversations re-judged ({result.turns} assistant turns, {changed} "
        f"changed category), {result.skipped} already done, {result.failed} failed, "
        f"{result.unmatched} without their instruction -> {result.out}"
    )
    for (old, new), n in result.changes.most_common():
        print(f"  {old} -> {new}: {n}")
    if result.written or result.skipped:
        print(summary_table(load_run(result.out)[1]))
    return 1 if result.failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from icpo_eval.export import export_run
    from icpo_eval.selection import load_selection

    selection = load_selection(args.recipe) if args.recipe else None
    out, counts = export_run(
        args.run_dir,
        args.output,
        args.format,
        augment=args.augment,
        tasks=args.tasks,
        selection=selection,
        multi_turn=args.multi_turn,
    )
    print(
        f"{counts['rows']} rows ({counts['fully_specified']} fully specified, "
        f"{counts['underspecified']} underspecified, {counts['augment_rows']} from --augment) "
        f"-> {out} ({args.format})"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from icpo_eval.train import load_recipe, train

    recipe = load_recipe(args.config)
    if args.data:
        recipe.data = args.data
    if args.tasks:
        recipe.tasks = args.tasks
    if args.output_dir:
        recipe.output_dir = args.output_dir
    if args.model:
        recipe.model = args.model
        _ = recipe.model_path  # refuse anything but local/smollm2 and hf/PATH, in one line
    if args.max_steps:
        recipe.max_steps = args.max_steps
    out = train(recipe)
    print(f"-> {out}  (evaluate: icpo-eval run --model hf/{out})")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from icpo_eval.families import family_names, get_family
    from icpo_eval.paths import TASKS_DIR
    from icpo_eval.tasksets import load_source, write_jsonl

    if args.tasks_command == "list":
        for name in family_names():
            path = TASKS_DIR / f"{name}.jsonl"
            n = sum(1 for line in open(path) if line.strip()) if path.exists() else 0
            print(f"{name:<12} {n:>5} instructions  {path if n else '(no committed set)'}")
        return 0
    if args.tasks_command == "show":
        for inst in load_source(args.name)[: args.n]:
            print(json.dumps(inst.to_dict(), indent=2, ensure_ascii=False))
        return 0
    family = get_family(args.family)
    insts = family.generate(args.n, args.seed)
    write_jsonl(insts, args.output)
    print(f"{len(insts)} {family.name} instructions (seed {args.seed}) -> {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "run": cmd_run,
        "leaderboard": cmd_leaderboard,
        "report": cmd_report,
        "rejudge": cmd_rejudge,
        "export": cmd_export,
        "train": cmd_train,
        "tasks": cmd_tasks,
    }
    try:
        return handlers[args.command](args)
    except BrokenPipeError:  # `icpo-eval tasks show NAME | head`: the reader has gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush does not fail again
        return 0
    except IcpoError as e:
        print(f"icpo-eval: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("icpo-eval: interrupted; finished conversations are saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
