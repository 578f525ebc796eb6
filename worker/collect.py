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

SCAN = 256  # queue entries looked at per pass
POLL_S = 0.001


def compatible(job: Job | None, steps: int) -> bool:
    return job is not None and job.func_name == GENERATE_FUNC and job.kwargs.get("steps") == steps


def claim(redis, queue: Queue, steps: int, limit: int) -> list[tuple[Job, JobSpec]]:
    """Take up to `limit` compatible jobs off the queue (oldest first)."""
    ids = [i.decode() for i in redis.lrange(queue.key, 0, SCAN - 1)]
    if not ids or limit <= 0:
        return []
    taken = []
    for job in Job.fetch_many(ids, connection=redis, serializer=JSONSerializer):
        if len(taken) >= limit:
            break
        if compatible(job, steps) and redis.lrem(queue.key, 1, job.id) == 1:  # 1: it is ours alone
            job.set_status(RQStatus.STARTED)
            taken.append((job, JobSpec(**job.kwargs)))
    return taken


def gather(redis, queue: Queue, steps: int, room: int, wait_ms: int) -> list[tuple[Job, JobSpec]]:
    """Claim compatible jobs until the batch is full or `wait_ms` has passed."""
    deadline = time.monotonic() + wait_ms / 1000
    taken: list[tuple[Job, JobSpec]] = []
    while True:
        taken += claim(redis, queue, steps, room - len(taken))
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
