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

from app.core import keys
from app.core.jobs import GENERATE_FUNC, JobSpec, JobStatus, new_job_id, new_record, read_record, transition
from app.core.settings import Settings
from model_store import Manifest, ModelStoreError, Store

QUEUE_FULL_RETRY_S = 5


def queue_for(redis, model_ref: str) -> Queue:
    return Queue(keys.queue_name(model_ref), connection=redis, serializer=JSONSerializer)


def resolve_model(store: Store, ref: str | None, settings: Settings) -> Manifest:
    """The manifest of a DDIM model in the store, or a 422 naming the field and the available models."""
    try:
        manifest = store.resolve(ref or settings.model)
        if manifest.kind != "ddim-unet":
            raise ModelStoreError(f"{manifest.ref} is not a generative model")
        return manifest
    except ModelStoreError as exc:
        available = [m.ref for m in store.list() if m.kind == "ddim-unet"]
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "model"), "msg": f"{exc}; available: {available}", "input": ref}]
        ) from None


def submit(
    redis, settings: Settings, manifest: Manifest, seed: int, steps: int, eta: float, previews: bool, owner: str = ""
) -> str:
    """Create the job record and enqueue it; 429 when the model's queue is full."""
    queue = queue_for(redis, manifest.ref)
    if queue.count >= settings.max_queue:
        raise HTTPException(429, "the queue is full; retry later", headers={"Retry-After": str(QUEUE_FULL_RETRY_S)})
    spec = JobSpec(new_job_id(), seed, steps, eta, manifest.ref, manifest.digest, previews)
    model = {"name": manifest.name, "version": manifest.version, "digest": manifest.digest}
    redis.hset(keys.job(spec.job_id), mapping=new_record(spec, model, owner))
    try:
        queue.enqueue_call(
            GENERATE_FUNC,
            kwargs=spec.to_kwargs(),
            job_id=spec.job_id,
            timeout=settings.job_timeout,
            result_ttl=settings.result_ttl,
            failure_ttl=settings.result_ttl,
        )
    except Exception:
        redis.delete(keys.job(spec.job_id))
        raise
    return spec.job_id


def queue_position(redis, record: dict[str, str]) -> int | None:
    """0-based place in the model's queue, or None when not waiting there."""
    model = json.loads(record["model"])
    position = redis.lpos(queue_for(redis, f"{model['name']}@{model['version']}").key, record["id"])
    return int(position) if position is not None else None


def reconcile(redis, record: dict[str, str], ttl: int) -> dict[str, str]:
    """A job our record calls queued or running, but that RQ has failed (timeout, refused, crash), is failed."""
    if record["status"] not in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
        return record
    try:
        job = Job.fetch(record["id"], connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return record
    if job.get_status(refresh=False) not in (RQStatus.FAILED, RQStatus.STOPPED, RQStatus.CANCELED):
        return record
    result = job.latest_result()
    detail = (result.exc_string or "").strip().splitlines()[-1:] if result else []
    error = f"the worker failed the job: {detail[0] if detail else 'no details'}"
    fields = {"status": JobStatus.FAILED, "finished_at": repr(time.time()), "error": error}
    if transition(redis, record["id"], (JobStatus.QUEUED, JobStatus.RUNNING), fields):
        redis.expire(keys.job(record["id"]), ttl)
    return read_record(redis, record["id"]) or record


def cancel(redis, record: dict[str, str], finished_at: str) -> bool:
    """queued/running -> canceled. A queued job also leaves the RQ queue; a running one stops at its next step."""
    old = transition(
        redis,
        record["id"],
        (JobStatus.QUEUED, JobStatus.RUNNING),
        {"status": JobStatus.CANCELED, "finished_at": finished_at},
    )
    if old not in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
        return False
    if old == JobStatus.QUEUED.value:
        model = json.loads(record["model"])
        queue_for(redis, f"{model['name']}@{model['version']}").remove(record["id"])
    return True
