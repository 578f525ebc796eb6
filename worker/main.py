"""`diffusetv worker`: load its models once (`--model`, else DIFFUSETV_MODELS), then run jobs from their RQ
queues in this process.

No fork per job (a SimpleWorker), RQ's JSON serializer, and only `worker.jobs` functions: a job
naming any other function fails without being imported or run.

A full Redis (`maxmemory`, `noeviction`) does not end the worker: the jobs' writes wait for room (worker/batch.py), and
so do RQ's own, or are skipped where nothing depends on them (`DiffuseWorker`).
"""

from __future__ import annotations

import logging
import time
import uuid

import redis as redis_lib
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from app.core import keys, workers
from app.core.logs import configure_logging
from app.core.redis import connect_sync, is_oom, skip_when_full, wait_for_redis, while_full
from app.core.runs import fail_jobs
from app.core.settings import Settings, get_settings
from model_store import kinds
from worker import health, jobs, registry
from worker.engine import load_engine
from worker.heartbeat import Heartbeat, claim_engines

log = logging.getLogger("diffusetv.worker")
RQ_PATIENCE_S = health.MARGIN_S  # how long RQ's records of a job's start and end wait for a full Redis


class DiffuseWorker(SimpleWorker):
    """An RQ SimpleWorker that runs nothing but `worker.jobs` functions, promises its next deadline to the
    health file (worker/health.py) from its main loop, and outlasts a full Redis.

    RQ ends its loop on any error it does not expect ("found an unhandled exception, quitting"), and a full Redis
    refuses its writes: so the wait for a job (the check for suspension, the dequeue) is tried again until Redis has
    room, its records of a job's start and end for up to RQ_PATIENCE_S, and the rest (heartbeat, state, registry
    cleaning) is skipped meanwhile. A job whose end RQ could not record is left to RQ's registry cleaning, and to the
    API's reconcile (app/reaper.py)."""

    busy = False

    def promise(self) -> None:
        """Busy: the running job's RQ timeout (app.core.timeouts), from RQ's execution of it, which it holds in memory
        (no Redis call); JOB_TIMEOUT until RQ has started it. Idle: the wait for a job."""
        settings = get_settings()
        seconds = self.dequeue_timeout
        if self.busy:
            job = self.get_current_job() if self.executions else None
            seconds = jobs.timeout_of(job) if job is not None else settings.job_timeout
        health.promise(settings.health_file, seconds + health.MARGIN_S, "busy" if self.busy else "idle")

    def heartbeat(self, timeout=None, pipeline=None):  # RQ calls it before each wait for jobs and after each job
        skip_when_full(log, "RQ's worker heartbeat", super().heartbeat, timeout, pipeline)
        self.promise()

    def set_state(self, state, pipeline=None):
        skip_when_full(log, f"RQ's worker state ({state})", super().set_state, state, pipeline)

    def set_shutdown_requested_date(self):
        skip_when_full(log, "RQ's record of the stop request", super().set_shutdown_requested_date)

    def run_maintenance_tasks(self):
        skip_when_full(log, "RQ's registry cleaning", super().run_maintenance_tasks)

    def unsubscribe(self):
        """RQ's, without its unbounded wait for the listener thread: redis-py's PubSubWorkerThread.stop() waits for the
        thread's get_message, which blocks for its whole sleep_time (RQ's 60 s) when the thread had already read the
        reply to the UNSUBSCRIBE. A daemon thread, it ends with the process; the stop waits 1 s at most."""
        if self.pubsub_thread:
            self.pubsub.unsubscribe()
            self.pubsub_thread.stop(timeout=1)
            self.pubsub.close()

    def register_death(self):
        skip_when_full(log, "RQ's record of this worker's end", super().register_death)

    def check_for_suspension(self, burst):
        while_full(log, "RQ's check for suspension", super().check_for_suspension, burst)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        return while_full(log, "the wait for a job", super().dequeue_job_and_maintain_ttl, timeout, max_idle_time)

    def prepare_execution(self, job):
        what = f"RQ's start of job {job.id}"
        return while_full(log, what, super().prepare_execution, job, patience_s=RQ_PATIENCE_S)

    def prepare_job_execution(self, job, remove_from_intermediate_queue=False):
        what = f"RQ's start of job {job.id}"
        super_call = super().prepare_job_execution
        while_full(log, what, super_call, job, remove_from_intermediate_queue, patience_s=RQ_PATIENCE_S)

    def handle_execution_ended(self, job, queue, heartbeat_ttl):
        what = f"RQ's end of job {job.id}"
        while_full(log, what, super().handle_execution_ended, job, queue, heartbeat_ttl, patience_s=RQ_PATIENCE_S)

    def handle_job_success(self, job, queue, started_job_registry, execution):
        what = f"RQ's success of job {job.id}"
        super_call = super().handle_job_success
        while_full(log, what, super_call, job, queue, started_job_registry, execution, patience_s=RQ_PATIENCE_S)

    def execute_job(self, job, queue):
        self.busy = True
        self.promise()
        try:
            self.execute_allowed_job(job, queue)
        except redis_lib.RedisError as exc:
            if not is_oom(exc):
                raise
            log.error("Redis is full: RQ's records of job %s are incomplete (%s); RQ's cleaning ends it", job.id, exc)
        finally:
            self.busy = False

    def execute_allowed_job(self, job, queue):
        message = refusal(job)
        if message:
            log.error("job %s %s", job.id, message)
            ttl = get_settings().result_ttl
            what = f"refusing job {job.id}"
            while_full(log, what, fail_jobs, self.connection, [job.id], message, ttl, patience_s=RQ_PATIENCE_S)
            execution = self.prepare_execution(job)
            self.handle_job_failure(job, queue, queue.started_job_registry, message, execution)
            self.set_state(WorkerStatus.IDLE)
            return
        super().execute_job(job, queue)


def load(settings: Settings, refs: list[str]) -> list[str]:
    """Load each model once; returns their exact refs (name@version)."""
    import torch

    torch.set_num_threads(settings.torch_threads)
    store = settings.store()
    kinds.load_modules(settings.extra_kind_modules)
    loaded = []
    for ref in refs:
        started = time.perf_counter()
        engine = load_engine(
            ref,
            store,
            settings.device,
            settings.precision,
            settings.compile,
            settings.probe_cache,
            settings.memory_budget_mb,
        )
        exact = engine.manifest.ref
        registry.ENGINES[exact] = engine
        loaded.append(exact)
        log.info(
            "loaded %s (kind %s, identity %s) as %s in %.2f s (probe %s); network calls of %s rows",
            exact,
            engine.manifest.kind,
            engine.manifest.identity[:12],
            engine.id,
            time.perf_counter() - started,
            "cached" if engine.denoiser.cached else "run",
            ", ".join(map(str, engine.probe.shapes.sizes)),
        )
        if engine.memory is not None:
            m = engine.memory
            log.info(
                "%s takes %.0f MB of weights and %.0f MB more at its largest call of %d rows; %.1f MB per sample in a "
                "batch: at most %d samples in the budget of %.0f MB",
                exact, m.parameters / 2**20, m.activations / 2**20, m.rows, m.per_sample / 2**20, m.max_batch,
                m.budget / 2**20,
            )  # fmt: skip
    return loaded


def refusal(job) -> str | None:
    """Why a job must not run, or None. Only `worker.jobs` functions run, with no callbacks or dependencies:
    RQ would import and call whatever a callback name in the job hash says."""
    try:
        func_name = job.func_name
    except Exception:  # not JSON (a pickle, say): it is never deserialized any other way
        return f"refused: a payload that is not a JSON job is not one of {sorted(jobs.ALLOWED)}"
    if func_name not in jobs.ALLOWED:
        return f"refused: {func_name!r} is not one of {sorted(jobs.ALLOWED)}"
    hooks = [
        n
        for n in ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name")
        if getattr(job, n, None)
    ]
    if hooks or getattr(job, "_dependency_ids", None):
        names = ", ".join(h.strip("_") for h in hooks) or "depends_on"
        return f"refused: callbacks or dependencies are not allowed ({names})"
    return None


def start_heartbeat(conn, engines: dict[str, str], settings: Settings) -> Heartbeat:
    """A new worker id and its heartbeat. A new id after a lost connection lets the reaper re-queue whatever
    the old id held, since that batch's outcome could not be written."""
    worker_id = uuid.uuid4().hex[:12]
    registry.WORKER_ID = worker_id
    memory = {ref: e.memory.to_json() for ref, e in registry.ENGINES.items() if ref in engines and e.memory is not None}
    heartbeat = Heartbeat(
        conn, worker_id, engines, settings.heartbeat_s, alive=lambda: not health.overdue(), memory=memory
    )
    heartbeat.beat()
    heartbeat.start()
    return heartbeat


def run(settings: Settings | None = None, models: list[str] | None = None, burst: bool = False) -> int:
    settings = settings or get_settings()
    configure_logging(settings.log_format)
    if not settings.redis_url:
        raise SystemExit("diffusetv worker: set DIFFUSETV_REDIS_URL (or run `diffusetv up` for a local stack)")
    health.clear(settings.health_file)  # not ready until the models are loaded and the loop runs
    log.info("loading %s", ", ".join(models or settings.served_models))
    refs = load(settings, models or settings.served_models)
    engines = {ref: registry.ENGINES[ref].id for ref in refs}
    conn = connect_sync(settings.redis_url, socket_timeout=None)
    wait_for_redis(conn, log)
    claim_engines(conn, engines, settings.heartbeat_ttl)
    heartbeat = start_heartbeat(conn, engines, settings)
    queues = [Queue(keys.queue_name(ref), connection=conn, serializer=JSONSerializer) for ref in refs]
    log.info("worker %s serving %s", registry.WORKER_ID, ", ".join(refs))
    try:
        while True:
            worker = DiffuseWorker(
                queues,
                name=workers.rq_name(registry.WORKER_ID),
                connection=conn,
                serializer=JSONSerializer,
                worker_ttl=health.DEQUEUE_TIMEOUT_S + 15,  # RQ waits worker_ttl - 15 s for a job, then loops
            )
            try:
                worker.work(burst=burst, logging_level="WARNING")
                return 0
            except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
                log.warning("lost Redis (%s); reconnecting as a new worker", exc)
                heartbeat.stop()
                wait_for_redis(conn, log)
                claim_engines(conn, engines, settings.heartbeat_ttl)
                heartbeat = start_heartbeat(conn, engines, settings)
    finally:
        heartbeat.stop()
        health.clear(settings.health_file)
