"""Schedules many conversations over one backend: batching, resume, progress.

Two schedules, one result:

- a *streaming* backend (the local one) gets every conversation at once and calls back as each
  reply ends; the runner judges it and hands back that conversation's next turn straight away
  (continuous batching across turns: the batch never waits for its slowest member);
- any other backend gets rounds: every live conversation advances one turn per round, in
  batches of ``batch_size``.

API models (:mod:`icpo_eval.models.api`) stream too: every conversation advances on its own,
at most ``--concurrency`` requests in flight, and the callback (judging, the simulator, the
store) runs in worker threads, so an LLM judge or simulator waiting on its own call holds up no
other conversation; ``finished`` is therefore guarded by a lock.

Either way a conversation is written to the store the moment it finishes, so a crash loses at
most the conversations in flight, and a re-run skips every conversation already on disk.

With ``--workers N`` the same two pieces (:func:`new_state`, :func:`drive`) run inside N Ray
actors instead (:mod:`icpo_eval.distributed`); this process still plans and writes.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icpo_eval import __version__
from icpo_eval.conversation import ConversationState, start_conversation
from icpo_eval.errors import IcpoError
from icpo_eval.families import Family, get_family
from icpo_eval.judges import TurnJudge, get_judge
from icpo_eval.models import Backend, GenParams, load_backend
from icpo_eval.models.base import Generation, Request, StreamingBackend
from icpo_eval.records import (
    Conversation,
    Instruction,
    RunSpec,
    conversation_id,
    derive_seed,
)
from icpo_eval.simulator import Simulator, get_simulator
from icpo_eval.store import RunStore

if TYPE_CHECKING:
    from icpo_eval.distributed import WorkerStats
    from icpo_eval.models.api import ApiSettings
from icpo_eval.tasksets import load_tasks

#: The batch of turn-by-turn rounds when ``--batch-size`` is ``auto`` and the backend has no
#: size of its own (:func:`batch_of`).
DEFAULT_ROUND_BATCH = 16


def run_id_of(spec: RunSpec) -> str:
    return Path(spec.out).name or "run"


@dataclass
class RunResult:
    out: Path
    skipped: int = 0
    written: int = 0
    conversations: list[Conversation] = field(default_factory=list)
    #: With ``--workers``: what each Ray worker did (conversations, seconds), in worker order.
    workers: list[WorkerStats] = field(default_factory=list)


#: One conversation to run: (conversation id, instruction, mode, run index), as :func:`plan`
#: makes them.
Planned = tuple[str, Instruction, str, int]


def plan(spec: RunSpec) -> list[Planned]:
    """Every (conversation id, instruction, mode, run index) the spec asks for."""
    instructions = load_tasks(spec.tasks, spec.limit, spec.strict)
    if spec.model.startswith("hf/") and not spec.allow_train_overlap:
        check_no_training_overlap(spec.model[3:], instructions)
    return [
        (conversation_id(inst.task_id, mode, r, spec.model), inst, mode, r)
        for inst in instructions
        for mode in spec.modes
        for r in range(spec.runs)
    ]


def check_no_training_overlap(checkpoint: str, instructions: list[Instruction]) -> None:
    """Refuse to evaluate an ICPO checkpoint on instructions it was trained on: its figures
    would measure memory, not behaviour (``--allow-train-overlap`` to do it anyway)."""
    from icpo_eval.train import training_task_ids

    trained = training_task_ids(checkpoint)
    if not trained:
        return
    seen = [inst.task_id for inst in instructions if inst.task_id in trained]
    if seen:
        raise IcpoError(
            f"{len(seen)} of {len(instructions)} instructions (first: {seen[0]}) are in the "
            f"training data of {checkpoint}; evaluate on held-out instructions, or pass "
            "--allow-train-overlap"
        )


def check_credentials(spec: RunSpec, model: bool = True) -> None:
    """Stop, with one line naming the variable, when a model, simulator, judge or grader that
    goes through litellm without a server of its own (``--*-api-base``) lacks the key its
    provider needs: otherwise every conversation would retry and fail, after the others had
    been paid for."""
    from icpo_eval.models import model_kind

    roles: list[tuple[str, str, list[str]]] = []
    if model and model_kind(spec.model) == "api":
        roles.append(("model", spec.model, spec.api_base))
    for role, name, bases in (
        ("simulator", spec.simulator, spec.simulator_api_base),
        ("judge", spec.judge, spec.judge_api_base),
        ("grader", spec.grader, spec.grader_api_base),
    ):
        if name.startswith("llm:"):
            roles.append((role, name[4:], bases))
    roles = [r for r in roles if not r[2]]
    if not roles:
        return
    from icpo_eval.models.api import missing_credentials

    for role, name, _ in roles:
        missing = missing_credentials(name)
        if missing:
            base = "--api-base" if role == "model" else f"--{role}-api-base"
            raise IcpoError(
                f"the {role} {name} needs {' and '.join(missing)}, which is not set: set it in "
                f"the environment, or give {base} for a server of your own"
            )


def preflight(spec: RunSpec, instructions: list[Instruction]) -> None:
    """Every check that can fail before the first model call: each family's own
    (:meth:`~icpo_eval.families.Family.preflight`: databases present and readable ...), its
    warnings printed one line each."""
    by_family: dict[str, list[Instruction]] = {}
    for inst in instructions:
        by_family.setdefault(get_family(inst.task).name, []).append(inst)
    for name, insts in sorted(by_family.items()):
        for line in get_family(name).preflight(insts):
            print(f"icpo-eval: warning: {line}", file=sys.stderr)


def graded_families(spec: RunSpec, names: set[str]) -> dict[str, Family]:
    """The families of a run as ``--grader`` grades them (:meth:`Family.with_grader`)."""
    api = api_settings(spec, spec.grader_api_base)
    return {name: get_family(name).with_grader(spec.grader, api) for name in sorted(names)}


def sandbox_strength(spec: RunSpec, instructions: list[Instruction]) -> str | None:
    """The sandbox the run's model-written programs will get (None when no family runs any):
    refused under ``--sandbox strict`` when only the weak fallback is there, said in one line
    on stderr otherwise."""
    if not any(get_family(inst.task).uses_sandbox for inst in instructions):
        return None
    from icpo_eval import sandbox

    strength = sandbox.strength()
    if strength != "strong":
        why = "bubblewrap (bwrap) cannot run here"
        if spec.sandbox == "strict":
            raise IcpoError(f"--sandbox strict: {why}; install bubblewrap or drop --sandbox strict")
        print(
            f"icpo-eval: warning: weak sandbox: {why}; model-written code runs under rlimits, "
            "namespaces and an audit hook only (recorded as sandbox: weak)",
            file=sys.stderr,
        )
    return strength


def api_settings(spec: RunSpec, bases: list[str]) -> ApiSettings:
    """How the API calls of one role (model, simulator or judge) travel."""
    from icpo_eval.models.api import ApiSettings

    return ApiSettings(
        api_bases=list(bases),
        concurrency=spec.concurrency,
        cache=spec.cache,
        timeout=spec.timeout,
        max_attempts=spec.max_attempts,
        retry_wait=spec.retry_wait,
        transport=spec.transport,
    )


def run(spec: RunSpec, backend: Backend | None = None, progress: bool = True) -> RunResult:
    """Run (or resume) every conversation of ``spec``; returns what this call wrote.

    With ``spec.workers`` the conversations run on that many Ray actors
    (:func:`icpo_eval.distributed.run_on_workers`); this process still plans, checks and is the
    only writer of the store. Without it Ray is never imported.
    """
    spec.version = __version__
    spec.check(model=backend is None)  # fail fast, before tasks are read
    if spec.workers is not None:
        if backend is not None:
            raise IcpoError("--workers loads the model in each worker; it takes no backend")
        from icpo_eval.distributed import require_ray

        require_ray()  # one line naming the install command, before any work
    simulator = get_simulator(spec.simulator, api_settings(spec, spec.simulator_api_base))
    judge = get_judge(spec.judge, api_settings(spec, spec.judge_api_base))
    check_credentials(spec, model=backend is None)
    todo = plan(spec)
    unique = list({id(inst): inst for _, inst, _, _ in todo}.values())
    preflight(spec, unique)
    families = graded_families(spec, {get_family(inst.task).name for inst in unique})
    sandbox = sandbox_strength(spec, unique)
    store, done = RunStore.open(spec.out, spec)
    try:  # whatever happens from here on, the store is closed and the folder's lock released
        return _run_open(spec, backend, progress, todo, done, store, families, simulator, judge,
                         sandbox)  # fmt: skip
    finally:
        store.close()


def _run_open(
    spec: RunSpec,
    backend: Backend | None,
    progress: bool,
    todo: list[Planned],
    done: set[str],
    store: RunStore,
    families: dict[str, Family],
    simulator: Simulator,
    judge: TurnJudge,
    sandbox: str | None,
) -> RunResult:
    """:func:`run` once the store is open: the conversations not yet done, on the workers or
    on this process's backend, each written the moment it ends."""
    result = RunResult(out=Path(spec.out))
    pending = [item for item in todo if item[0] not in done]
    result.skipped = len(todo) - len(pending)
    if not pending:
        return result
    if spec.workers is not None:
        from icpo_eval.distributed import run_on_workers

        run_on_workers(spec, pending, sandbox, store, result, progress)
        return result
    states = [new_state(spec, item, families, simulator, judge, sandbox) for item in pending]
    if backend is None:
        api = api_settings(spec, spec.api_base)
        backend = load_backend(spec.model, batch_size=spec.batch_size, api=api)
        if getattr(backend, "batch_note", ""):
            print(f"icpo-eval: {spec.model}: {backend.batch_note}", file=sys.stderr)
    params = GenParams(spec.temperature, spec.top_p, spec.max_new_tokens)
    bar = _progress(len(states), progress)
    lock = threading.Lock()

    def finished(s: ConversationState) -> None:
        store.append(s.record)
        with lock:
            result.written += 1
            result.conversations.append(s.record)
            bar.update(1)

    try:
        drive(backend, states, params, batch_of(spec, backend), finished, bar)
    finally:
        bar.close()
    return result


def new_state(
    spec: RunSpec,
    item: Planned,
    families: dict[str, Family],
    simulator: Simulator,
    judge: TurnJudge,
    sandbox: str | None,
) -> ConversationState:
    """A fresh conversation for one planned item: its record (ids, seed derived from the
    conversation id, so that it runs the same wherever it runs) and its first user turn."""
    cid, inst, mode, r = item
    return start_conversation(
        inst,
        mode,
        simulator,
        judge,
        spec.max_turns,
        conversation_id=cid,
        run_id=run_id_of(spec),
        model=spec.model,
        seed=derive_seed(spec.seed, cid),
        run_index=r,
        family=families[get_family(inst.task).name],
        sandbox=sandbox,
    )


def batch_of(spec: RunSpec, backend: Backend) -> int:
    """The batch of turn-by-turn rounds: ``--batch-size``, else (``auto``) the backend's own
    choice, else :data:`DEFAULT_ROUND_BATCH`."""
    return spec.batch_size or getattr(backend, "batch_size", None) or DEFAULT_ROUND_BATCH


def drive(
    backend: Backend,
    states: list[ConversationState],
    params: GenParams,
    batch_size: int,
    finished: Callable[[ConversationState], None],
    bar: Any,
) -> None:
    """Run every conversation of ``states`` to its end on ``backend``, calling ``finished``
    as each one ends (from a worker thread on the API backend): streaming when the backend
    streams, turn-by-turn rounds otherwise."""
    if isinstance(backend, StreamingBackend):
        # Continuous batching: a conversation's next turn is queued the moment its reply
        # is judged, so the backend's batch stays full across turns.
        def on_result(s: ConversationState, gen: Generation) -> Request | None:
            s.observe(gen)
            if s.done:
                finished(s)
                return None
            return (s, s.messages(), s.next_seed())

        backend.stream([(s, s.messages(), s.next_seed()) for s in states], params, on_result)
    else:
        _rounds(backend, states, params, batch_size, finished, bar)


def _rounds(
    backend: Backend,
    states: list[ConversationState],
    params: GenParams,
    batch_size: int,
    finished: Callable[[ConversationState], None],
    bar: Any,
) -> None:
    """Turn-by-turn rounds for backends without streaming: every live conversation advances
    one turn per round, in batches of similar length (less padding)."""
    live = list(states)
    while live:
        live.sort(key=lambda s: s.prompt_chars())
        for start in range(0, len(live), batch_size):
            batch = live[start : start + batch_size]
            gens = backend.generate(
                [s.messages() for s in batch], params, [s.next_seed() for s in batch]
            )
            for s, g in zip(batch, gens, strict=True):
                s.observe(g)
                if s.done:
                    finished(s)
        live = [s for s in live if not s.done]
        bar.set_postfix(live=len(live))


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc="conversations",
        unit="conv",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )
