"""Dynamic batching: after taking a job, take compatible queued ones (same model and steps) with it.

Compatible jobs are claimed straight from the model's RQ queue list with LREM, so each is taken by
exactly one worker; the wait for more is bounded by MAX_BATCH_WAIT_MS.
"""

from __future__ import annotations

import time

from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from app.core.jobs import GENERATE_FUNC, JobSpec
from worker.batch import take

SCAN = 256  # queue entries looked at per pass
POLL_S = 0.001


def compatible(job: Job | None, steps: int, identity: str) -> bool:
    """A generation job of the same step count, for the model (identity) this worker has loaded."""
    if job is None:
        return False
    try:
        name, kwargs = job.func_name, job.kwargs
    except Exception:  # not a JSON job: leave it to the worker, which refuses it
        return False
    return name == GENERATE_FUNC and kwargs.get("steps") == steps and kwargs.get("identity") == identity


def claim(redis, queue: Queue, steps: int, identity: str, limit: int) -> list[tuple[Job, JobSpec]]:
    """Take up to `limit` compatible jobs off the queue (oldest first), each recorded as this worker's at once."""
    ids = [i.decode() for i in redis.lrange(queue.key, 0, SCAN - 1)]
    if not ids or limit <= 0:
        return []
    taken = []
    for job in Job.fetch_many(ids, connection=redis, serializer=JSONSerializer):
        if len(taken) >= limit:
            break
        if compatible(job, steps, identity) and redis.lrem(queue.key, 1, job.id) == 1:  # 1: it is ours alone
            spec = JobSpec(**job.kwargs)
            take(redis, [spec.job_id])
            job.set_status(RQStatus.STARTED)
            taken.append((job, spec))
    return taken


def gather(
    redis, queue: Queue, steps: int, identity: str, room: int, wait_ms: int, taken: list[tuple[Job, JobSpec]]
) -> list[tuple[Job, JobSpec]]:
    """Claim compatible jobs into `taken` until the batch is full or `wait_ms` has passed."""
    deadline = time.monotonic() + wait_ms / 1000
    while True:
        taken += claim(redis, queue, steps, identity, room - len(taken))
        if len(taken) >= room or time.monotonic() >= deadline:
            return taken
        time.sleep(POLL_S)


def settle(redis, jobs: list[Job], ok: bool, error: str, ttl: int) -> None:
    """End the RQ lifecycle of claimed jobs (the taken job's own is ended by the RQ worker)."""
    for job in jobs:
        job.set_status(RQStatus.FINISHED if ok else RQStatus.FAILED)
        queue = Queue(job.origin, connection=redis, serializer=JSONSerializer)
        if ok:
            queue.finished_job_registry.add(job, ttl)
        else:
            queue.failed_job_registry.add(job, ttl, exc_string=error)
        job.cleanup(ttl, remove_from_queue=False)  # the RQ job hash expires with the result
