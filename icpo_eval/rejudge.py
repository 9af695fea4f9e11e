"""``icpo-eval rejudge``: judge a stored run again, with another judge or a newer version.

Every assistant turn of every conversation is decided, graded and rewarded again through the
one door, :func:`icpo_eval.reward.judge_reply`, with the history it had when it ran, and the
conversation's scores follow (:func:`icpo_eval.conversation.score_conversation`). Nothing is
generated: in the multi-turn modes the trajectory stays as it ran, even where the new judge
would have let the conversation go on or stopped it earlier, and every record says so
(``rejudged_from``: the run folder it came from). The result is a new run folder, written
through the run store (one line per conversation, fsynced; a second call resumes), whose
``run.json`` names the new judge, so the leaderboard never merges it with runs judged otherwise
without saying so.

A conversation whose judge gave up (an LLM judge's API) is not written; it is counted, and
the next call tries it again. The source folder is only read.
"""

from __future__ import annotations

import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from icpo_eval.conversation import score_conversation
from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, get_family
from icpo_eval.judges import TurnJudge, get_judge
from icpo_eval.models.base import CallFailed
from icpo_eval.records import Conversation, Instruction, RunSpec
from icpo_eval.reward import judge_reply
from icpo_eval.runner import api_settings, graded_families, sandbox_strength
from icpo_eval.store import RunStore, load_run
from icpo_eval.tasksets import load_tasks


@dataclass
class RejudgeResult:
    out: Path
    written: int = 0
    skipped: int = 0  # already in the output folder (a resumed call)
    failed: int = 0  # the judge gave up on a turn: not written, tried again next time
    unmatched: int = 0  # no instruction of the run's tasks has the conversation's task id
    turns: int = 0  # assistant turns judged
    first_error: str | None = None
    #: (old category, new category) -> number of turns, for the turns whose category changed.
    changes: Counter[tuple[str, str]] = field(default_factory=Counter)


def default_out(run_dir: str | Path, judge: TurnJudge) -> Path:
    """``RUN-rejudged-JUDGE`` beside the run (``results/x-rejudged-rule-v2``)."""
    slug = judge.name.replace("/", "_").replace(":", "-")
    if judge.version and not judge.name.startswith("llm:"):
        slug += f"-v{judge.version}"
    src = Path(run_dir)
    return src.with_name(f"{src.name}-rejudged-{slug}")


def rejudge(
    run_dir: str | Path,
    judge_name: str,
    out: str | Path | None = None,
    tasks: str | None = None,
    spec_overrides: dict[str, object] | None = None,
) -> RejudgeResult:
    """Judge every conversation of ``run_dir`` again with ``judge_name`` into ``out``.

    ``tasks`` replaces the run's task source (when the run was made from a file now elsewhere);
    ``spec_overrides`` sets the new run spec's API fields (``judge_api_base``, ``concurrency``,
    ``cache``, ``timeout`` ...), as ``icpo-eval run`` takes them.
    """
    src = Path(run_dir)
    spec, convs = load_run(src)
    if spec is None:
        raise IcpoError(f"{src}: no run.json; rejudge needs the run's spec to find its tasks")
    new = RunSpec.from_dict(spec.to_dict())
    new.judge = judge_name
    if tasks:
        new.tasks = tasks
    for key, value in (spec_overrides or {}).items():
        setattr(new, key, value)
    judge = get_judge(judge_name, api_settings(new, new.judge_api_base))
    dest = Path(out) if out else default_out(src, judge)
    if dest.resolve() == src.resolve():
        raise IcpoError(f"rejudge writes a new run folder; --out {dest} is the run itself")
    new.out = str(dest)
    instructions = _instructions(new.tasks, new.limit)
    sandbox = sandbox_strength(new, list(instructions.values())) if convs else None
    store, done = RunStore.open(dest, new)
    result = RejudgeResult(out=dest)
    todo = []
    for conv in convs:
        if conv.conversation_id in done:
            result.skipped += 1
        elif (conv.family, conv.task_id) not in instructions:
            result.unmatched += 1
        else:
            todo.append(conv)
    families = graded_families(new, {c.family for c in todo})
    try:
        with ThreadPoolExecutor(max_workers=max(1, new.concurrency)) as pool:
            jobs = [
                pool.submit(
                    _rejudge_one,
                    c,
                    instructions[(c.family, c.task_id)],
                    families[c.family],
                    judge,
                    src,
                )
                for c in todo
            ]
            for job in jobs:
                try:
                    record, changes = job.result()
                except CallFailed as e:
                    result.failed += 1
                    result.first_error = result.first_error or str(e)
                    continue
                if get_family(record.family).uses_sandbox:
                    record.sandbox = sandbox  # the grading just done ran under this one
                store.append(record)
                result.written += 1
                result.turns += len(record.assistant_turns)
                result.changes.update(changes)
    finally:
        store.close()
    if result.failed:
        print(
            f"icpo-eval: warning: the judge gave up on {result.failed} conversations (first: "
            f"{result.first_error}); not written, run the same command again to retry them",
            file=sys.stderr,
        )
    if result.unmatched:
        print(
            f"icpo-eval: warning: {result.unmatched} conversations name task ids that "
            f"{new.tasks!r} does not hold; not re-judged (pass --tasks with the run's tasks)",
            file=sys.stderr,
        )
    return result


def _instructions(tasks: str, limit: int | None) -> dict[tuple[str, str], Instruction]:
    """The run's instructions by (family, task id); the first of a repeated id wins."""
    found: dict[tuple[str, str], Instruction] = {}
    for inst in load_tasks(tasks, limit):
        found.setdefault((get_family(inst.task).name, inst.task_id), inst)
    return found


def _rejudge_one(
    conv: Conversation, inst: Instruction, family: Family, judge: TurnJudge, src: Path
) -> tuple[Conversation, Counter[tuple[str, str]]]:
    """One conversation judged again: a new record, and the category changes it holds."""
    record = Conversation.from_dict(conv.to_dict())
    record.judge = judge.name
    record.judge_version = judge.version
    record.rejudged_from = conv.rejudged_from or str(src)
    system = family.system_prompt(inst)
    history = [{"role": "system", "content": system}] if system else []
    revealed: set[int] = set()
    changes: Counter[tuple[str, str]] = Counter()
    for turn in record.turns:
        if turn.role == "user":
            revealed.update(turn.shards)
        else:
            fully = turn.fully_specified
            if fully is None:  # records of old versions: from the shards said so far
                fully = inst.required_ids <= revealed
            v = judge_reply(inst, family, judge, turn.content, history, fully, turn.truncated)
            if v.category != turn.category:
                changes[(turn.category or "-", v.category)] += 1
            turn.fully_specified = fully
            turn.category, turn.answer, turn.score = v.category, v.answer, v.score
            turn.detail, turn.reward = v.detail, v.reward
            turn.judge, turn.judge_version = v.judge, v.judge_version
            turn.note = f"reward withheld: {v.withheld}" if v.withheld else None
        history.append({"role": turn.role, "content": turn.content})
    score_conversation(record)
    return record, changes
