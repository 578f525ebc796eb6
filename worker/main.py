"""`diffusetv worker`: load its models once (`--model`, else DIFFUSETV_MODELS), then run jobs from their RQ
queues in this process.

No fork per job (a SimpleWorker), RQ's JSON serializer, and only `worker.jobs` functions: a job
naming any other function fails without being imported or run.
"""

from __future__ import annotations

import logging
import time
import uuid

import redis as redis_lib
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from app.core import keys
from app.core.logs import configure_logging
from app.core.redis import connect_sync, wait_for_redis
from app.core.runs import fail_jobs
from app.core.settings import Settings, get_settings
from model_store import Store, kinds
from worker import health, jobs, registry
from worker.engine import load_engine
from worker.heartbeat import Heartbeat, claim_engines

log = logging.getLogger("diffusetv.worker")


class DiffuseWorker(SimpleWorker):
    """An RQ SimpleWorker that runs nothing but `worker.jobs` functions, and promises its next deadline to the
    health file (worker/health.py) from its main loop."""

    busy = False

    def promise(self) -> None:
        settings = get_settings()
        seconds = settings.job_timeout if self.busy else self.dequeue_timeout
        health.promise(settings.health_file, seconds + health.MARGIN_S, "busy" if self.busy else "idle")

    def heartbeat(self, timeout=None, pipeline=None):  # RQ calls it before each wait for jobs and after each job
        super().heartbeat(timeout, pipeline)
        self.promise()

    def execute_job(self, job, queue):
        self.busy = True
        self.promise()
        try:
            self.execute_allowed_job(job, queue)
        finally:
            self.busy = False

    def execute_allowed_job(self, job, queue):
        message = refusal(job)
        if message:
            log.error("job %s %s", job.id, message)
            fail_jobs(self.connection, [job.id], message, get_settings().result_ttl)
            execution = self.prepare_execution(job)
            self.handle_job_failure(job, queue, queue.started_job_registry, message, execution)
            self.set_state(WorkerStatus.IDLE)
            return
        super().execute_job(job, queue)


def load(settings: Settings, refs: list[str]) -> list[str]:
    """Load each model once; returns their exact refs (name@version)."""
    import torch

    torch.set_num_threads(settings.torch_threads)
    store = Store(settings.model_store)
    kinds.load_modules(settings.extra_kind_modules)
    loaded = []
    for ref in refs:
        started = time.perf_counter()
        engine = load_engine(ref, store, settings.device, settings.precision, settings.compile, settings.probe_cache)
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
    heartbeat = Heartbeat(conn, worker_id, engines, settings.heartbeat_s, alive=lambda: not health.overdue())
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
                name=f"diffusetv-{registry.WORKER_ID}",
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
