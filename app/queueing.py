"""Putting jobs on the queue, finding their place in it, and canceling them (RQ, JSON serializer)."""

from __future__ import annotations

import json
import time

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from app.core import events, keys, runs
from app.core.jobs import (
    GENERATE_FUNC,
    INTERPOLATE_FUNC,
    InterpolateSpec,
    JobSpec,
    JobStatus,
    expire,
    new_interpolation_record,
    new_job_id,
    new_record,
    read_record,
    transition,
)
from app.core.settings import Settings
from app.models import offered
from model_store import Manifest, ModelStoreError, Store, kinds

QUEUE_FULL_RETRY_S = 5
LOST_AFTER_S = 30  # a job whose run has no RQ job this long after it was made will never run


def queue_for(redis, model_ref: str) -> Queue:
    return Queue(keys.queue_name(model_ref), connection=redis, serializer=JSONSerializer)


def resolve_model(store: Store, ref: str | None, settings: Settings) -> Manifest:
    """The manifest of a served kind's model in the store, or a 422 naming the field and the available models."""
    try:
        manifest = store.resolve(ref or settings.model)
        kinds.served(manifest)  # an unknown kind, or a stored-only one, is refused with one line naming it
        return manifest
    except ModelStoreError as exc:
        available = [m.ref for m in offered(store)]
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "model"), "msg": f"{exc}; available: {available}", "input": ref}]
        ) from None


def model_record(manifest: Manifest) -> dict:
    """The job's `model`: which version ran it, its weights' digest and its identity."""
    return {
        "name": manifest.name,
        "version": manifest.version,
        "digest": manifest.digest,
        "identity": manifest.identity,
    }


def current_engine(redis, model_ref: str) -> str:
    """`device/precision/kernels` of the workers serving the model, or PENDING_ENGINE while none has claimed it."""
    engine = redis.get(keys.engine(model_ref))
    return engine.decode() if engine else runs.PENDING_ENGINE


def submit(
    redis, settings: Settings, manifest: Manifest, seed: int, steps: int, eta: float, previews: bool, owner: str = ""
) -> str:
    """Answer from the result cache, join an identical run in flight, or queue a new run (429 when full)."""
    eta = float(eta) + 0.0  # -0.0 is 0.0: one engine key, one set of bytes
    engine = current_engine(redis, manifest.ref)
    model = model_record(manifest)
    key = runs.engine_key(manifest.identity, manifest.ref, seed, steps, eta, engine)
    spec = JobSpec(new_job_id(), seed, steps, eta, manifest.ref, manifest.identity, previews, key)
    if engine != runs.PENDING_ENGINE and (hit := runs.cached(redis, key)):
        answered = answer_from_cache(redis, settings, spec, model, owner, hit)
        if answered:
            return answered
    queue = queue_for(redis, manifest.ref)
    check_room(queue, settings)
    redis.hset(keys.job(spec.job_id), mapping=new_record(spec, model, owner))
    events.emit(redis, spec.job_id, events.STATUS, {"status": JobStatus.QUEUED.value})
    role, _, status = runs.subscribe(redis, key, spec.job_id)
    if role == "follow":  # an identical run is queued or running: wait for it, run nothing new
        if status == JobStatus.RUNNING.value:
            transition(
                redis, spec.job_id, (JobStatus.QUEUED,), {"status": JobStatus.RUNNING, "started_at": repr(time.time())}
            )
        redis.hincrby(keys.METRICS, "joined", 1)
        return spec.job_id
    enqueue(redis, queue, settings, GENERATE_FUNC, spec)
    return spec.job_id


def check_room(queue: Queue, settings: Settings) -> None:
    """429 with Retry-After when the model's queue holds MAX_QUEUE runs."""
    if queue.count >= settings.max_queue:
        raise HTTPException(429, "the queue is full; retry later", headers={"Retry-After": str(QUEUE_FULL_RETRY_S)})


def enqueue(redis, queue: Queue, settings: Settings, func: str, spec: JobSpec | InterpolateSpec) -> None:
    """Put the job's run on its RQ queue (JSON kwargs, the job's own id); on failure its run fails, cleanly."""
    try:
        queue.enqueue_call(
            func,
            kwargs=spec.to_kwargs(),
            job_id=spec.job_id,
            timeout=settings.job_timeout,
            result_ttl=settings.result_ttl,
            failure_ttl=settings.result_ttl,
        )
    except Exception:
        runs.fail_run(redis, spec.job_id, "the job could not be queued", settings.result_ttl)
        raise


def submit_interpolation(
    redis, settings: Settings, manifest: Manifest, seed_a: int, seed_b: int, frames: int, steps: int, owner: str = ""
) -> str:
    """Queue an interpolation job (429 when the model's queue is full)."""
    queue = queue_for(redis, manifest.ref)
    check_room(queue, settings)
    spec = InterpolateSpec(new_job_id(), seed_a, seed_b, frames, steps, manifest.ref, manifest.identity)
    model = model_record(manifest)
    redis.hset(keys.job(spec.job_id), mapping=new_interpolation_record(spec, model, owner))
    events.emit(redis, spec.job_id, events.STATUS, {"status": JobStatus.QUEUED.value})
    enqueue(redis, queue, settings, INTERPOLATE_FUNC, spec)
    return spec.job_id


def answer_from_cache(redis, settings: Settings, spec: JobSpec, model: dict, owner: str, hit: dict) -> str | None:
    """A new job, already succeeded, whose PNG is a copy of the cached result: no model work, no queue.

    None when the cached PNG expired meanwhile."""
    if not redis.copy(keys.png(hit["job"]), keys.png(spec.job_id), replace=True):
        return None
    source = read_record(redis, hit["job"]) or {}
    now = repr(time.time())
    record = new_record(spec, model, owner)
    record.update(
        {
            "status": JobStatus.SUCCEEDED.value,
            "started_at": now,
            "finished_at": now,
            "cached": "1",
            "sha256": hit["sha256"],
            "engine": source.get("engine", ""),
            "batch_size": source.get("batch_size", ""),
            "progress": source.get("progress", ""),
        }
    )
    pipe = redis.pipeline(transaction=True)
    pipe.expire(keys.png(spec.job_id), settings.result_ttl)
    pipe.hset(keys.job(spec.job_id), mapping={k: v for k, v in record.items() if v is not None})
    events.emit(pipe, spec.job_id, events.STATUS, {"status": JobStatus.SUCCEEDED.value})
    expire(pipe, spec.job_id, settings.result_ttl)
    pipe.hincrby(keys.METRICS, "cache_hits", 1)
    pipe.execute()
    return spec.job_id


def queue_position(redis, record: dict[str, str]) -> int | None:
    """0-based place in the model's queue, or None when not waiting there."""
    model = json.loads(record["model"])
    run_id = record.get("run") or record["id"]  # a job waiting for an identical run waits in its place
    position = redis.lpos(queue_for(redis, f"{model['name']}@{model['version']}").key, run_id)
    return int(position) if position is not None else None


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


def cancel(redis, record: dict[str, str], finished_at: str, ttl: int) -> bool:
    """queued/running -> canceled. The run it waited for stops only when no other job waits for it:
    a queued run then leaves the RQ queue, a running one leaves its batch at the next step."""
    old, withdrawn = runs.cancel_job(redis, record["id"], finished_at, ttl)
    if old not in runs.WAITING:
        return False
    if withdrawn:
        model = json.loads(record["model"])
        run_id = record.get("run") or record["id"]
        queue_for(redis, f"{model['name']}@{model['version']}").remove(run_id)
        redis.expire(Job.key_for(run_id), ttl)  # the RQ job will not run: let its hash go with the job
    return True
