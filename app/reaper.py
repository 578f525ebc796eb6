"""The reaper: one API instance at a time (a Redis lock) re-queues the runs of workers that died.

A worker's heartbeat key lives 2 x HEARTBEAT_S. A run whose worker's key is gone is put back at the
front of its queue, with its jobs `queued` again, up to MAX_RETRIES times; then its jobs fail with a
clear error. A re-run gives the same bytes, since the output is a function of the engine key.

A worker that dies after RQ moved a run's job off its queue (into RQ's intermediate queue, then its started
registry) but before it marked the run running leaves a run that nothing watches: the reaper puts such a job back
at the front of its queue once it has seen it so for STRANDED_AFTER_S (`rescue_stranded`). Runs that join a batch
are taken off the queue and marked running in one step (app.core.runs.claim), so they never strand.

Any API instance also repairs, as it reads a job, a run that RQ ended without it (`reconcile`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from app.core import keys, objects, runs, workers
from app.core.jobs import JobStatus, read_record, transition
from app.core.results import open_store
from app.core.settings import Settings

log = logging.getLogger("diffusetv.reaper")
LOST_AFTER_S = 30  # a job whose run has no RQ job this long after it was made will never run
# a live worker marks a run running (worker.batch.take) milliseconds after RQ hands it the job; with a full Redis, RQ's
# records of the start wait up to twice its patience (worker.main.RQ_PATIENCE_S, 30 s). A job in RQ's intermediate
# queue this long, not marked, was left by a dead worker (one in the started registry names its worker: see `stranded`)
STRANDED_AFTER_S = 120
_LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('EXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""


def requeue_rq_job(redis, job_id: str) -> bool:
    """Put a started RQ job back at the front of its queue, forgetting its dead execution."""
    try:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return False
    queue = Queue(job.origin, connection=redis, serializer=JSONSerializer)
    started = queue.started_job_registry.key
    members = [m for m in redis.zrange(started, 0, -1) if m.decode().split(":")[0] == job_id]
    pipe = redis.pipeline(transaction=True)  # all or nothing: a full Redis refuses the whole, and the job stays found
    pipe.multi()  # before the first command: RQ's enqueue_job asks for a transaction of its own otherwise
    if members:
        pipe.zrem(started, *members)
    pipe.lrem(queue.key, 0, job_id)  # never twice in the queue (one reaper at a time holds the lock)
    pipe.lrem(queue.intermediate_queue_key, 0, job_id)
    queue.enqueue_job(job, pipeline=pipe, at_front=True)
    pipe.execute()
    return True


def reap_once(redis, settings: Settings) -> list[str]:
    """One pass over the runs workers have taken; returns the ids of those whose worker was found dead."""
    reaped = []
    for raw in redis.smembers(keys.RUNNING):
        run_id = raw.decode()
        run = {k.decode(): v.decode() for k, v in redis.hgetall(keys.run(run_id)).items()}
        if run.get("status") != "running":
            redis.srem(keys.RUNNING, run_id)
            continue
        if redis.exists(keys.worker(run.get("worker", ""))):
            continue
        reaped.append(run_id)
        deaths = redis.hincrby(keys.run(run_id), "deaths", 1)
        if deaths > settings.max_retries:
            error = (
                f"the worker running this job died {deaths} times; giving up "
                f"(DIFFUSETV_MAX_RETRIES={settings.max_retries})"
            )
            runs.fail_run(redis, run_id, error, settings.result_ttl)
            log.warning("run %s failed after %d worker deaths", run_id[:12], deaths)
            continue
        for job_id in runs.job_ids(redis, run_id):
            transition(
                redis,
                job_id,
                (JobStatus.RUNNING,),
                {"status": JobStatus.QUEUED, "progress": "", "started_at": "", "retries": str(deaths)},
            )
        redis.hset(keys.run(run_id), mapping={"status": "queued", "worker": ""})
        redis.srem(keys.RUNNING, run_id)
        if not requeue_rq_job(redis, run.get("rq_job") or run_id):
            runs.fail_run(redis, run_id, "the job's queue entry was lost", settings.result_ttl)
            continue
        redis.hincrby(keys.METRICS, "requeued", 1)
        log.warning("re-queued run %s of dead worker %s (death %d)", run_id[:12], run.get("worker"), deaths)
    return reaped


def stranded(redis) -> dict[str, bool]:
    """RQ jobs that a worker has taken off their queue (RQ's intermediate queue or started registry hold them) whose
    run is still `queued`, not marked running: their worker has not reached `take` yet, or never will. Each maps to
    whether its worker is known dead. In the started registry, RQ's record of the job names its worker: one that still
    beats holds it, however long it takes (left out); one whose heartbeat is gone is dead. The intermediate queue names
    no worker (the record may still name an earlier execution's): only time tells."""
    found: dict[str, bool] = {}
    for raw in redis.smembers(Queue.redis_queues_keys):
        queue = Queue.from_queue_key(raw.decode(), connection=redis, serializer=JSONSerializer)
        taken = [i.decode() for i in redis.lrange(queue.intermediate_queue_key, 0, -1)]
        started = [m.decode().split(":")[0] for m in redis.zrange(queue.started_job_registry.key, 0, -1)]
        for rq_id, named in [(i, False) for i in taken] + [(i, True) for i in started]:  # RQ job id = run id
            if redis.hget(keys.run(rq_id), "status") != b"queued" or redis.sismember(keys.RUNNING, rq_id):
                continue
            holder = workers.id_of_rq_name((redis.hget(Job.key_for(rq_id), "worker_name") or b"").decode())
            if named and holder and redis.exists(keys.worker(holder)):
                continue
            found[rq_id] = found.get(rq_id, False) or bool(named and holder)
    return found


def rescue_stranded(redis, seen: dict[str, float], after_s: float = STRANDED_AFTER_S) -> list[str]:
    """Put back at the front of their queue the jobs `stranded` with a dead worker, and the others once every pass
    for `after_s` has seen them so (`seen`: job id -> when a pass first did, kept by the caller between passes); their
    runs' jobs stay `queued` throughout. Returns their ids."""
    now, current = time.monotonic(), stranded(redis)
    for rq_id in set(seen) - set(current):
        del seen[rq_id]
    rescued = []
    for rq_id, dead in sorted(current.items()):
        if not dead and now - seen.setdefault(rq_id, now) < after_s:
            continue
        seen.pop(rq_id, None)
        if redis.sismember(keys.RUNNING, rq_id):  # its worker took it after all
            continue
        if requeue_rq_job(redis, rq_id):
            rescued.append(rq_id)
            redis.hincrby(keys.METRICS, "requeued", 1)
            log.warning("re-queued run %s: a worker took it off its queue and died before it started it", rq_id[:12])
    return rescued


class Reaper(threading.Thread):
    """Reaps every HEARTBEAT_S seconds while holding the reaper lock (TTL 2 x HEARTBEAT_S), and every RESULTS_SWEEP_S
    sweeps the result store of the objects no live job uses any more, RESULTS_SWEEP_BATCH at most a pass
    (app.core.objects.sweep)."""

    def __init__(self, redis, settings: Settings) -> None:
        super().__init__(name="reaper", daemon=True)
        self.redis, self.settings = redis, settings
        self.instance = uuid.uuid4().hex
        self.stopped = threading.Event()
        self.stranded: dict[str, float] = {}  # rescue_stranded's, between passes

    def holds_lock(self) -> bool:
        """Take the lock, or renew it if it is ours (compare and renew in one step)."""
        return bool(self.redis.eval(_LOCK, 1, keys.REAPER_LOCK, self.instance, self.settings.heartbeat_ttl))

    def run(self) -> None:
        s = self.settings
        swept = time.monotonic()
        while not self.stopped.wait(min(s.heartbeat_s, s.results_sweep_s)):
            try:
                if not self.holds_lock():
                    self.stranded.clear()  # another instance watches them; its own clock counts
                    continue
                reap_once(self.redis, s)
                rescue_stranded(self.redis, self.stranded)
                if time.monotonic() - swept >= s.results_sweep_s:
                    swept = time.monotonic()
                    objects.sweep(self.redis, open_store(s, self.redis), s.results_sweep_batch)
            except Exception as exc:  # Redis away or a transient error: try again next period
                log.warning("reaper pass failed: %s", exc)

    def stop(self) -> None:
        self.stopped.set()


def reconcile(redis, record: dict[str, str], ttl: int) -> dict[str, str]:
    """A job our record calls queued or running, but whose run RQ has ended without it, is failed.

    That covers a job failed by RQ itself (a refused function, a crash in the worker's own code), and
    a run lost without a trace. A run a worker has taken is left to the reaper, which watches its worker.
    """
    if record["status"] not in runs.WAITING:
        return record
    run_id = record.get("run") or record["id"]
    if redis.sismember(keys.RUNNING, run_id):
        return record
    try:
        job = Job.fetch(run_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:  # queued at most a moment before its RQ job exists; later, it is lost
        if time.time() - float(record["created_at"]) > LOST_AFTER_S:
            runs.fail_run(redis, run_id, "the job's run was lost before it reached the queue", ttl)
            return read_record(redis, record["id"]) or record
        return record
    status = job.get_status(refresh=False)
    if status in (RQStatus.FAILED, RQStatus.STOPPED, RQStatus.CANCELED):
        result = job.latest_result()
        detail = (result.exc_string or "").strip().splitlines()[-1:] if result else []
        error = f"the worker failed the job: {detail[0] if detail else 'no details'}"
    elif status == RQStatus.FINISHED and (read_record(redis, record["id"]) or {}).get("status") in runs.WAITING:
        error = "the job's run ended without a result"
    else:
        return record
    runs.fail_run(redis, run_id, error, ttl)
    return read_record(redis, record["id"]) or record
