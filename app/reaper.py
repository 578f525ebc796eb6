"""The reaper: one API instance at a time (a Redis lock) re-queues the runs of workers that died.

A worker's heartbeat key lives 2 x HEARTBEAT_S. A run whose worker's key is gone is put back at the
front of its queue, with its jobs `queued` again, up to MAX_RETRIES times; then its jobs fail with a
clear error. A re-run gives the same bytes, since the output is a function of the engine key.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from app.core import keys, runs
from app.core.jobs import JobStatus, expire, transition
from app.core.settings import Settings

log = logging.getLogger("diffusetv.reaper")
ACTIVE = (JobStatus.QUEUED.value.encode(), JobStatus.RUNNING.value.encode())


def requeue_rq_job(redis, job_id: str) -> bool:
    """Put a started RQ job back at the front of its queue, forgetting its dead execution."""
    try:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return False
    queue = Queue(job.origin, connection=redis, serializer=JSONSerializer)
    started = queue.started_job_registry.key
    for member in redis.zrange(started, 0, -1):
        if member.decode().split(":")[0] == job_id:
            redis.zrem(started, member)
    redis.lrem(queue.key, 0, job_id)  # never twice in the queue
    queue.enqueue_job(job, at_front=True)
    return True


def fail_jobs(redis, job_ids: list[str], error: str, ttl: int) -> None:
    for job_id in job_ids:
        fields = {"status": JobStatus.FAILED, "finished_at": repr(time.time()), "error": error}
        if transition(redis, job_id, (JobStatus.QUEUED, JobStatus.RUNNING), fields):
            expire(redis, job_id, ttl)
            redis.hincrby(keys.METRICS, "jobs_failed", 1)


def reap_once(redis, settings: Settings) -> list[str]:
    """One pass over the runs in progress; returns the run keys whose worker was found dead."""
    reaped = []
    for raw in redis.smembers(keys.RUNNING):
        run_key = raw.decode()
        run = {k.decode(): v.decode() for k, v in redis.hgetall(keys.run(run_key)).items()}
        if not run:
            redis.srem(keys.RUNNING, run_key)
            continue
        if run.get("status") != "running" or redis.exists(keys.worker(run.get("worker", ""))):
            continue
        reaped.append(run_key)
        attempts = redis.hincrby(keys.run(run_key), "deaths", 1)
        job_ids = [j.decode() for j in redis.smembers(keys.run_jobs(run_key))]
        statuses = [redis.hget(keys.job(j), "status") for j in job_ids]
        waiting = [j for j, s in zip(job_ids, statuses, strict=True) if s in ACTIVE]
        if not waiting:
            runs.close(redis, run_key)
            continue
        if attempts > settings.max_retries:
            error = (
                f"the worker running this job died {attempts} times; giving up "
                f"(DIFFUSETV_MAX_RETRIES={settings.max_retries})"
            )
            fail_jobs(redis, waiting, error, settings.result_ttl)
            runs.close(redis, run_key)
            log.warning("run %s failed after %d worker deaths", run_key[:12], attempts)
            continue
        for job_id in waiting:
            transition(
                redis,
                job_id,
                (JobStatus.RUNNING,),
                {"status": JobStatus.QUEUED, "progress": "", "started_at": "", "retries": str(attempts)},
            )
        redis.hset(keys.run(run_key), mapping={"status": "queued", "worker": ""})
        redis.srem(keys.RUNNING, run_key)
        if not requeue_rq_job(redis, run.get("rq_job", "")):
            fail_jobs(redis, waiting, "the job's queue entry was lost", settings.result_ttl)
            runs.close(redis, run_key)
        redis.hincrby(keys.METRICS, "requeued", 1)
        log.warning("re-queued run %s of dead worker %s (death %d)", run_key[:12], run.get("worker"), attempts)
    return reaped


class Reaper(threading.Thread):
    """Reaps every HEARTBEAT_S seconds while holding the reaper lock (TTL 2 x HEARTBEAT_S)."""

    def __init__(self, redis, settings: Settings) -> None:
        super().__init__(name="reaper", daemon=True)
        self.redis, self.settings = redis, settings
        self.instance = uuid.uuid4().hex
        self.stopped = threading.Event()

    def holds_lock(self) -> bool:
        ttl = self.settings.heartbeat_ttl
        if self.redis.set(keys.REAPER_LOCK, self.instance, nx=True, ex=ttl):
            return True
        if self.redis.get(keys.REAPER_LOCK) == self.instance.encode():
            self.redis.expire(keys.REAPER_LOCK, ttl)
            return True
        return False

    def run(self) -> None:
        while not self.stopped.wait(self.settings.heartbeat_s):
            try:
                if self.holds_lock():
                    reap_once(self.redis, self.settings)
            except Exception as exc:  # Redis away or a transient error: try again next period
                log.warning("reaper pass failed: %s", exc)

    def stop(self) -> None:
        self.stopped.set()
