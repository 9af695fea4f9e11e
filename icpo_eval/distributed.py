"""``icpo-eval run --workers N``: the conversations of one run spread over N Ray actors.

What runs where:

- the **driver** (the ``icpo-eval run`` process) does everything :func:`icpo_eval.runner.run`
  does before the first model call (the spec check, the plan, the preflight, the store, the
  resume) and stays the **only writer** of the run store;
- each **worker** is a Ray actor (:class:`ConversationWorker`) that owns one backend (an API
  client, or a local/hf model: one GPU per worker where the cluster has GPUs, else a share of
  the CPU threads), its own simulator, judge and graders. A conversation runs entirely inside
  one worker, with the runner's own machinery (:func:`~icpo_eval.runner.new_state` and
  :func:`~icpo_eval.runner.drive`), so it gives exactly the turns it gives in one process: its
  seeds come from the conversation id, never from where or when it runs.

The driver hands work out in *chunks* (a few conversations each, :func:`chunk_size`), keeps
:data:`CHUNKS_IN_FLIGHT` chunks per worker with ``ray.wait``, and appends each finished record
to the store as its chunk comes back. While one chunk drains its slowest conversations the next
one keeps the worker busy.

Concurrency: ``--concurrency C`` stays the cap of the whole run, per role. Each of the N
workers gets ``max(1, C // N)`` requests in flight per role (model, simulator, judge), so the
total is at most C (or N when C < N).

A worker that dies (killed, out of memory, its node lost) is restarted by Ray (up to
:data:`MAX_RESTARTS` times); the chunks it held come back to the queue and run again on
whichever worker has room. A chunk's records arrive all together or not at all, and the driver
writes only conversations it has not written, so nothing is lost or written twice.

Ray is imported only here, and only with ``--workers``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from icpo_eval.errors import IcpoError
from icpo_eval.models import GenParams, load_backend, model_kind
from icpo_eval.models.local.backend import CPU_AUTO_BATCH
from icpo_eval.records import Conversation, RunSpec

if TYPE_CHECKING:
    from icpo_eval.conversation import ConversationState
    from icpo_eval.runner import Planned, RunResult
    from icpo_eval.store import RunStore

INSTALL = "pip install 'icpo-eval[ray]'"
#: How often Ray restarts a worker whose process died before the driver gives up on it.
MAX_RESTARTS = 3
#: Chunks each worker holds at once: one running to its end while the next one starts.
CHUNKS_IN_FLIGHT = 2
#: How often one chunk may be lost with its worker before the run stops (a conversation that
#: kills every worker it runs on would otherwise go round for ever).
MAX_CHUNK_TRIES = 4
#: Environment variables the driver forwards to its workers: where the caches and data are, and
#: the offline switches. Never a secret: API keys must be set where the workers run (a local
#: Ray instance inherits the driver's environment; on a cluster, set them before ``ray start``).
FORWARDED_ENV = (
    "ICPO_EVAL_CACHE",
    "ICPO_EVAL_SPIDER_DIR",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "LITELLM_LOCAL_MODEL_COST_MAP",
    "TOKENIZERS_PARALLELISM",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS",
)
#: Called with (worker index, actor handle, :meth:`ConversationWorker.info`) once each worker is
#: up: for monitoring, and for the tests that kill a worker's process.
WORKER_STARTED: list[Callable[[int, Any, dict[str, Any]], None]] = []


def require_ray() -> Any:
    """The ``ray`` module, or one IcpoError naming the install command."""
    try:
        import ray
    except ImportError:
        raise IcpoError(f"--workers needs Ray, which is not installed: {INSTALL}") from None
    return ray


@dataclass
class WorkerStats:
    """What one worker did in a run (printed by ``icpo-eval run`` after the summary)."""

    index: int
    node: str
    pid: int
    conversations: int = 0
    #: From its first chunk handed out to its last chunk back (driver's clock).
    seconds: float = 0.0
    #: Chunks lost with its process (each one ran again, here or on another worker).
    lost_chunks: int = 0


def worker_spec(spec: RunSpec) -> RunSpec:
    """The spec a worker runs under: the run's, with its share of ``--concurrency``."""
    workers = spec.workers or 1
    return replace(spec, concurrency=max(1, spec.concurrency // workers))


def chunk_size(spec: RunSpec, pending: int) -> int:
    """Conversations per chunk: enough to keep one worker's request limit busy (API) or its
    batch full (local model), but small enough that every worker gets
    :data:`CHUNKS_IN_FLIGHT` chunks."""
    workers = spec.workers or 1
    fair = math.ceil(pending / (workers * CHUNKS_IN_FLIGHT))
    if model_kind(spec.model) == "api":
        want = worker_spec(spec).concurrency
    else:
        want = 2 * (spec.batch_size or CPU_AUTO_BATCH)  # auto: each worker picks its own
    return max(1, min(want, fair))


class ConversationWorker:
    """One Ray actor's work: a backend, a simulator, a judge and graders, built once, then
    chunks of conversations run to their end. Plain Python: :func:`run_on_workers` makes it
    a Ray actor, and a test can use it in process."""

    def __init__(self, spec: dict[str, Any], threads: int, env: dict[str, str]) -> None:
        os.environ.update(env)
        self.spec = RunSpec.from_dict(spec)
        #: Why this worker could not set up (a model that does not load ...): reported by
        #: :meth:`info` as one line, instead of an actor that dies with a traceback.
        self.setup_error: str | None = None
        try:
            self._setup(threads)
        except IcpoError as e:
            self.setup_error = str(e)
        except Exception as e:
            self.setup_error = f"{type(e).__name__}: {e}"

    def _setup(self, threads: int) -> None:
        from icpo_eval.judges import get_judge
        from icpo_eval.runner import api_settings
        from icpo_eval.simulator import get_simulator

        self.local = model_kind(self.spec.model) != "api"
        if self.local:
            import torch

            torch.set_num_threads(max(1, threads))
        s = self.spec
        self.simulator = get_simulator(s.simulator, api_settings(s, s.simulator_api_base))
        self.judge = get_judge(s.judge, api_settings(s, s.judge_api_base))
        self.backend = load_backend(
            s.model, batch_size=s.batch_size, api=api_settings(s, s.api_base)
        )
        self.params = GenParams(s.temperature, s.top_p, s.max_new_tokens)
        self.families: dict[str, Any] = {}
        self._sandbox: str | None = None  # this node's sandbox strength, once asked
        # A local model batches one stream at a time; API chunks share the client's limit.
        self._serial = threading.Lock() if self.local else None
        self._families_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """Where this worker runs: its process id and node address."""
        import socket

        try:
            import ray

            node = ray.util.get_node_ip_address()
        except Exception:  # used outside Ray
            node = socket.gethostname()
        return {"pid": os.getpid(), "node": node, "error": self.setup_error}

    def run_chunk(self, items: list[Planned], sandbox: str | None) -> list[dict[str, Any]]:
        """Run these conversations to their end; their finished records, as dicts."""
        if self.setup_error is not None:
            raise IcpoError(self.setup_error)
        from icpo_eval.families import get_family
        from icpo_eval.runner import _progress, batch_of, drive, graded_families, new_state

        sandbox = self._sandbox_here(sandbox)
        names = {get_family(inst.task).name for _, inst, _, _ in items}
        with self._families_lock:
            missing = names - set(self.families)
            if missing:
                self.families.update(graded_families(self.spec, missing))
            families = dict(self.families)
        states = [
            new_state(self.spec, item, families, self.simulator, self.judge, sandbox)
            for item in items
        ]
        done: list[dict[str, Any]] = []
        lock = threading.Lock()

        def finished(state: ConversationState) -> None:
            with lock:
                done.append(state.record.to_dict())

        bar = _progress(len(states), False)
        batch = batch_of(self.spec, self.backend)
        if self._serial is not None:
            with self._serial:
                drive(self.backend, states, self.params, batch, finished, bar)
        else:
            drive(self.backend, states, self.params, batch, finished, bar)
        return done

    def _sandbox_here(self, driver: str | None) -> str | None:
        """The sandbox this worker's model-written programs get (None when the run has none):
        measured on this node, which may differ from the driver's; refused under
        ``--sandbox strict`` when only the weak fallback is here."""
        if driver is None:
            return None
        if self._sandbox is None:
            from icpo_eval import sandbox

            strength = sandbox.strength()
            if strength != "strong" and self.spec.sandbox == "strict":
                raise IcpoError(
                    f"--sandbox strict: bubblewrap (bwrap) cannot run on worker node "
                    f"{self.info()['node']}; install it there or drop --sandbox strict"
                )
            self._sandbox = strength
        return self._sandbox


def connect(ray: Any, spec: RunSpec) -> bool:
    """Join the Ray cluster of ``--ray-address`` (else ``RAY_ADDRESS``), or start a local Ray
    instance for this run; True when this call connected (and must disconnect), False when the
    caller had already initialised Ray."""
    if ray.is_initialized():
        return False
    address = spec.ray_address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # the run stays offline
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            workers = spec.workers or 1
            ray.init(
                num_cpus=max(workers, os.cpu_count() or 1),
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local Ray instance"
        raise IcpoError(f"--workers: cannot start or join {where}: {str(e)[:200]}") from None
    return True


def run_on_workers(
    spec: RunSpec,
    pending: list[Planned],
    sandbox: str | None,
    store: RunStore,
    result: RunResult,
    progress: bool = True,
) -> None:
    """Run ``pending`` on ``spec.workers`` Ray actors, appending each finished conversation to
    ``store`` (and ``result``) as its chunk comes back. Ray is shut down afterwards when this
    call started or joined it."""
    ray = require_ray()
    owned = connect(ray, spec)
    try:
        _Scheduler(ray, spec, pending, sandbox, store, result, progress).run()
    finally:
        if owned:
            ray.shutdown()


class _Scheduler:
    """The driver's side: starts the workers, keeps chunks in flight, writes what comes back,
    hands lost chunks to the workers still standing."""

    def __init__(
        self,
        ray: Any,
        spec: RunSpec,
        pending: list[Planned],
        sandbox: str | None,
        store: RunStore,
        result: RunResult,
        progress: bool,
    ) -> None:
        self.ray = ray
        self.spec = spec
        self.sandbox = sandbox
        self.store = store
        self.result = result
        self.n = spec.workers or 1
        size = chunk_size(spec, len(pending))
        #: Chunks waiting for a worker, each with how many times it was lost already.
        self.queue: deque[tuple[list[Planned], int]] = deque(
            (pending[i : i + size], 0) for i in range(0, len(pending), size)
        )
        self.total = len(pending)
        self.written: set[str] = set()
        self.progress = progress
        self.actors: list[Any] = []
        self.alive: list[bool] = []
        self.stats: list[WorkerStats] = []
        self.first_sent: list[float | None] = []
        #: Object ref of a chunk in flight -> (worker index, chunk, times lost before).
        self.in_flight: dict[Any, tuple[int, list[Planned], int]] = {}
        #: The worker that last lost a chunk (by the chunk's id), so that it goes elsewhere.
        self.lost_on: dict[int, int] = {}

    # -- starting -------------------------------------------------------------------------
    def _start_workers(self) -> None:
        ray = self.ray
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        local = model_kind(self.spec.model) != "api"
        num_gpus = 1 if local and gpus > 0 else 0
        if num_gpus and gpus < self.n:
            raise IcpoError(
                f"--workers {self.n} with a local model takes one GPU each; the cluster has {gpus}"
            )
        threads = max(1, cpus // self.n)
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        actor_class = ray.remote(ConversationWorker).options(
            num_cpus=1,
            num_gpus=num_gpus,
            max_restarts=MAX_RESTARTS,
            max_task_retries=0,  # a lost chunk is re-queued by the driver, never re-run by Ray
            max_concurrency=CHUNKS_IN_FLIGHT + 1,  # the chunks and an info() call
        )
        share = worker_spec(self.spec).to_dict()
        self.actors = [actor_class.remote(share, threads, env) for _ in range(self.n)]
        try:
            infos = ray.get([a.info.remote() for a in self.actors])
        except ray.exceptions.RayTaskError as e:
            raise _as_icpo(e) from None
        except ray.exceptions.RayActorError as e:
            raise IcpoError(f"a worker could not start: {str(e).splitlines()[0][:300]}") from None
        errors = [info["error"] for info in infos if info.get("error")]
        if errors:
            raise IcpoError(errors[0])
        for i, (actor, info) in enumerate(zip(self.actors, infos, strict=True)):
            self.stats.append(WorkerStats(index=i, node=str(info["node"]), pid=int(info["pid"])))
            for hook in WORKER_STARTED:
                hook(i, actor, info)
        self.alive = [True] * self.n
        self.first_sent = [None] * self.n

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        from icpo_eval.runner import _progress

        try:
            self._start_workers()
            bar = _progress(self.total, self.progress)
            try:
                self._fill()
                while self.in_flight:
                    ready, _ = self.ray.wait(list(self.in_flight), num_returns=1)
                    self._collect(ready[0], bar)
                    self._fill()
            finally:
                bar.close()
        finally:
            self.result.workers = self.stats
            for actor in self.actors:
                try:
                    self.ray.kill(actor, no_restart=True)
                except Exception:  # already gone, or Ray itself is: nothing left to stop
                    pass

    def _load(self, worker: int) -> int:
        return sum(1 for w, _, _ in self.in_flight.values() if w == worker)

    def _fill(self) -> None:
        """Give queued chunks to the live workers with room, least loaded first."""
        while self.queue:
            room = [w for w in range(self.n) if self.alive[w] and self._load(w) < CHUNKS_IN_FLIGHT]
            if not room:
                break
            chunk, lost = self.queue[0]
            # A chunk lost with its worker goes to another one while the first restarts:
            # sent straight back, it would fail again until the restart is done.
            other = [x for x in room if x != self.lost_on.get(id(chunk))]
            if not other and any(
                self.alive[x] and x != self.lost_on.get(id(chunk)) for x in range(self.n)
            ):
                break  # wait for room on a worker that did not just lose it
            if not other:
                time.sleep(min(2.0, 0.5 * lost))  # the only worker left: give it time
            w = min(other or room, key=self._load)
            self.queue.popleft()
            ref = self.actors[w].run_chunk.remote(chunk, self.sandbox)
            self.in_flight[ref] = (w, chunk, lost)
            if self.first_sent[w] is None:
                self.first_sent[w] = time.perf_counter()
        if self.queue and not self.in_flight:
            left = sum(len(c) for c, _ in self.queue)
            raise IcpoError(
                f"every worker died; {left} conversations not run (run the same command "
                "again to resume)"
            )

    def _collect(self, ref: Any, bar: Any) -> None:
        """One chunk came back: write its records, or put it back in the queue if its worker
        died with it."""
        exc = self.ray.exceptions
        w, chunk, lost = self.in_flight.pop(ref)
        try:
            records = self.ray.get(ref)
        except exc.RayActorError as e:
            self.stats[w].lost_chunks += 1
            if isinstance(e, exc.ActorDiedError) and self.alive[w]:
                self.alive[w] = False  # out of restarts: its chunks go to the others
                print(
                    f"icpo-eval: warning: worker {w} is gone for good; the others carry on",
                    file=sys.stderr,
                )
            if lost + 1 >= MAX_CHUNK_TRIES:
                raise IcpoError(
                    f"a chunk of {len(chunk)} conversations (first: {chunk[0][0]}) was lost "
                    f"with its worker {lost + 1} times; the run stops here (resumable)"
                ) from None
            self.lost_on[id(chunk)] = w
            self.queue.appendleft((chunk, lost + 1))
            return
        except exc.RayTaskError as e:
            raise _as_icpo(e) from None
        for d in records:
            conv = Conversation.from_dict(d)
            if conv.conversation_id in self.written:
                continue  # defensive: a conversation is written once, whatever happened
            self.store.append(conv)
            self.written.add(conv.conversation_id)
            self.result.written += 1
            self.result.conversations.append(conv)
            bar.update(1)
        st = self.stats[w]
        st.conversations += len(records)
        st.seconds = time.perf_counter() - (self.first_sent[w] or time.perf_counter())


def _as_icpo(e: Any) -> Exception:
    """An error raised inside a worker, as the driver reports it: an IcpoError (bad key,
    unknown model ...) stays one line; anything else keeps its type name."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, IcpoError):
        return IcpoError(str(cause))
    if cause is not None:
        return RuntimeError(f"a worker failed: {type(cause).__name__}: {cause}")
    return RuntimeError(f"a worker failed: {e}")
