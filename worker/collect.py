"""Dynamic batching: after taking a job, take compatible queued ones (the same batch key: model and steps) with it.

Compatible jobs are claimed straight from the model's RQ queue list with LREM, so each is taken by
exactly one worker; the wait for more is bounded by MAX_BATCH_WAIT_MS. A batch takes at most MAX_BATCH_SIZE jobs, the
most its model's memory budget allows, and the most whose work its leader's time covers (`batch_room`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING

from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from app.core import timeouts
from app.core.redis import while_full
from app.core.settings import Settings
from app.core.spec import GenerateSpec, InvertSpec, Spec
from worker.batch import claim_run, keep_inputs

if TYPE_CHECKING:
    from worker.engine import Engine

log = logging.getLogger("diffusetv.worker")
SCAN = 256  # queue entries looked at per pass
POLL_S = 0.001


BATCHED = {cls.FUNC: cls for cls in (GenerateSpec, InvertSpec)}  # the jobs that run in batches
Joins = Callable[[Spec], bool]  # whether a queued job's spec may join the batch: its batch key is the leader's


def spec_of(job: Job | None) -> Spec | None:
    """The spec of a queued job that runs in batches (a generation, an inversion); None for any other job, or one
    this worker cannot run (left to the worker that takes it, which fails it with the reason)."""
    if job is None:
        return None
    try:
        name, kwargs = job.func_name, job.kwargs
        return BATCHED[name].from_kwargs(kwargs) if name in BATCHED else None
    except Exception:  # not a JSON job, or a newer API's (SpecError): leave it to the worker that takes it
        return None


def batch_room(settings: Settings, engine: Engine, spec: GenerateSpec | InvertSpec, timeout: int) -> int:
    """How many queued jobs may join the batch that `spec` leads, under its RQ timeout of `timeout` seconds: the batch
    holds at most MAX_BATCH_SIZE jobs, the most the model's memory budget allows (Engine.max_batch) and, for a model
    that records its cost (app.core.timeouts), the most whose work fits the leader's time at MIN_GFLOPS, each job that
    joins counted as the costliest of its batch key (GenerateSpec.batch_work)."""
    caps = [settings.max_batch_size]
    if engine.max_batch is not None:
        caps.append(engine.max_batch)
    lead = timeouts.flops(engine.manifest, spec.work())
    each = timeouts.flops(engine.manifest, spec.batch_work())
    if lead is not None and each:
        covered = Fraction(timeout) * Fraction(settings.min_gflops) * 10**9  # the FLOPs the leader's time covers
        caps.append(1 + math.floor((covered - lead) / each))
    return max(0, min(caps) - 1)


def claim(redis, queue: Queue, joins: Joins, room: int, taken: list[tuple[Job, Spec]], timeout: int) -> None:
    """Take jobs that may join the batch (`joins`: those of its batch key, Engine.batch_key) off the queue (oldest
    first) into `taken` until it holds `room`, each recorded as this worker's in the same step (worker.batch.claim_run),
    for the batch's time (`timeout`, its leader's) or the job's own where longer. A job is in `taken` from the moment
    it leaves the queue: should a later write fail, the caller fails it with the others."""
    ids = [i.decode() for i in redis.lrange(queue.key, 0, SCAN - 1)]
    if not ids or len(taken) >= room:
        return
    for job in Job.fetch_many(ids, connection=redis, serializer=JSONSerializer):
        if len(taken) >= room:
            break
        spec = spec_of(job)
        if spec is None or not joins(spec) or not claim_run(redis, queue.key, spec, max(timeout, job.timeout or 0)):
            continue  # not of the batch, or another worker's now (or Redis is full: the batch goes without it)
        taken.append((job, spec))
        keep_inputs(redis, spec.inputs(), max(timeout, job.timeout or 0))
        while_full(log, f"starting RQ job {job.id}", job.set_status, RQStatus.STARTED)


def gather(
    redis, queue: Queue, joins: Joins, room: int, wait_ms: int, taken: list[tuple[Job, Spec]], timeout: int
) -> list[tuple[Job, Spec]]:
    """Claim jobs that may join the batch (`joins`) into `taken` until the batch is full (`room`: batch_room) or
    `wait_ms` has passed; `timeout` is the batch's time, its leader's RQ timeout."""
    deadline = time.monotonic() + wait_ms / 1000
    while True:
        claim(redis, queue, joins, room, taken, timeout)
        if len(taken) >= room or time.monotonic() >= deadline:
            return taken
        time.sleep(POLL_S)


def settle(redis, jobs: list[Job], ok: bool, error: str, ttl: int) -> None:
    """End the RQ lifecycle of claimed jobs (the taken job's own is ended by the RQ worker). Each write sets a state,
    so that it may be sent again whole (app.core.redis.while_full)."""
    for job in jobs:
        job.set_status(RQStatus.FINISHED if ok else RQStatus.FAILED)
        queue = Queue(job.origin, connection=redis, serializer=JSONSerializer)
        if ok:
            queue.finished_job_registry.add(job, ttl)
        else:
            queue.failed_job_registry.add(job, ttl, exc_string=error)
        job.cleanup(ttl, remove_from_queue=False)  # the RQ job hash expires with the result
