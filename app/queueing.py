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

from app.core import keys, runs
from app.core.jobs import (
    GENERATE_FUNC,
    INTERPOLATE_FUNC,
    InterpolateSpec,
    JobSpec,
    new_interpolation_record,
    new_job_id,
    new_record,
    read_record,
)
from app.core.settings import Settings
from app.core.submit import Admission, admit, quota_for, result_cost
from app.models import offered
from model_store import Manifest, ModelStoreError, Store, kinds
from model_store.text import NO_TEXT, Prompted

QUEUE_FULL_RETRY_S = 5
FOLLOWERS_RETRY_S = 2
LOST_AFTER_S = 30  # a job whose run has no RQ job this long after it was made will never run


def queue_for(redis, model_ref: str) -> Queue:
    return Queue(keys.queue_name(model_ref), connection=redis, serializer=JSONSerializer)


def resolve_model(store: Store, ref: str | None, settings: Settings) -> Manifest:
    """The manifest of a model of a served kind in the store, or a 422 naming the field and the available models.

    The message names only what a client may know: the reference it sent, why its model cannot be served (an
    unknown kind, or one stored but not served, named) and the servable models (no paths)."""
    wanted = ref or settings.model
    try:
        manifest = store.resolve(wanted)
    except ModelStoreError:
        manifest = None
    if manifest is None:
        reason = f"no generative model {wanted!r} (NAME or NAME@VERSION)"
    else:
        reason = kinds.refusal(manifest, repr(wanted))
    if manifest is not None and reason is None:
        return manifest
    available = [m.ref for m in offered(store)]
    msg = f"{reason}; available: {available}"
    raise RequestValidationError([{"type": "value_error", "loc": ("body", "model"), "msg": msg, "input": ref}])


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
    redis,
    settings: Settings,
    manifest: Manifest,
    seed: int,
    steps: int,
    eta: float,
    previews: bool,
    owner: str = "",
    client: str = "",
    text: Prompted = NO_TEXT,
) -> str:
    """Answer from the result cache, join an identical run in flight, or queue a new run, atomically (app.core.submit);
    429 past a bound. `text`: a text model's normalised prompt and guidance (app.models.prompted)."""
    eta = float(eta) + 0.0  # -0.0 is 0.0: one engine key, one set of bytes
    engine = current_engine(redis, manifest.ref)
    model = model_record(manifest)
    identity = manifest.identity
    key = runs.engine_key(identity, manifest.ref, seed, steps, eta, engine, text.prompt, text.guidance)
    spec = JobSpec(new_job_id(), seed, steps, eta, manifest.ref, identity, previews, key, text.prompt, text.guidance)
    cost = result_cost(*image_shape(manifest), steps, previews)
    cache_key = key if engine != runs.PENDING_ENGINE else ""
    record = new_record(spec, model, owner, ignored=text.ignored)
    admitted(redis, settings, manifest, GENERATE_FUNC, spec, record, client, key, cache_key, cost)
    return spec.job_id


def submit_interpolation(
    redis,
    settings: Settings,
    manifest: Manifest,
    seed_a: int,
    seed_b: int,
    frames: int,
    steps: int,
    owner: str = "",
    client: str = "",
    text: Prompted = NO_TEXT,
    prompt_b: Prompted = NO_TEXT,
) -> str:
    """Queue an interpolation job, atomically (429 past a bound); `prompt_b` moves the condition to its prompt."""
    spec = InterpolateSpec(
        new_job_id(), seed_a, seed_b, frames, steps, manifest.ref, manifest.identity,
        text.prompt, prompt_b.prompt, text.guidance,
    )  # fmt: skip
    model = model_record(manifest)
    cost = result_cost(*image_shape(manifest), steps, False, images=2 * frames)  # the animation and the strip
    ignored = tuple(dict.fromkeys(text.ignored + prompt_b.ignored))
    record = new_interpolation_record(spec, model, owner, ignored)
    admitted(redis, settings, manifest, INTERPOLATE_FUNC, spec, record, client, "", "", cost)
    return spec.job_id


def image_shape(manifest: Manifest) -> tuple[int, int]:
    """(side, channels) of a square that holds the model's image (its kind says the shape): for result_cost."""
    height, width, channels = kinds.of(manifest).shape(manifest.config)
    return max(height, width), channels


def admitted(
    redis,
    settings: Settings,
    manifest: Manifest,
    func: str,
    spec: JobSpec | InterpolateSpec,
    record: dict[str, str],
    client: str,
    engine_key: str,
    cache_key: str,
    cost: int,
) -> Admission:
    """Run the atomic submit; a refusal is a 429 with Retry-After that says which bound was reached."""
    now = time.time()
    queue = queue_for(redis, manifest.ref)
    admission = admit(
        redis,
        spec.job_id,
        record,
        engine_key=engine_key,
        cache_key=cache_key,
        queue_key=queue.key,
        rq_commands=rq_commands(redis, queue, func, spec, settings),
        quota=quota_for(client, settings.client_jobs, settings.client_bytes, settings.quota_window_s, now),
        cost=cost,
        ttl=settings.pending_ttl,
        result_ttl=settings.result_ttl,
        max_queue=settings.max_queue,
        max_followers=settings.max_followers,
        now=repr(now),
    )
    if admission.admitted:
        return admission
    if admission.outcome == "queue_full":
        raise too_many("the queue is full; retry later", QUEUE_FULL_RETRY_S)
    if admission.outcome == "followers":
        raise too_many(
            f"{settings.max_followers} other requests already wait for this same image (DIFFUSETV_MAX_FOLLOWERS); "
            "retry later, when it is answered from the cache",
            FOLLOWERS_RETRY_S,
        )
    limit = (
        f"{settings.client_jobs} jobs" if admission.detail == "jobs" else f"{settings.client_bytes} bytes of results"
    )
    raise too_many(
        f"this client's quota of {limit} per {settings.quota_window_s} s is used up; retry later",
        int(admission.status or settings.quota_window_s),
    )


def too_many(message: str, retry_after: int) -> HTTPException:
    return HTTPException(429, message, headers={"Retry-After": str(max(1, retry_after))})


def rq_commands(redis, queue: Queue, func: str, spec: JobSpec | InterpolateSpec, settings: Settings) -> list[tuple]:
    """The Redis commands with which RQ would enqueue this job (its hash, TTL and queue entry), recorded on an
    unsent pipeline so that the submit script can run them with everything else."""
    queue.redis_server_version = server_version(redis)
    pipe = redis.pipeline(transaction=False)
    queue.enqueue_call(
        func,
        kwargs=spec.to_kwargs(),
        job_id=spec.job_id,
        timeout=settings.job_timeout,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.result_ttl,
        ttl=settings.pending_ttl,
        pipeline=pipe,
    )
    commands = [tuple(args) for args, _ in pipe.command_stack]
    pipe.reset()
    return commands


def server_version(redis) -> tuple[int, int, int]:
    """Redis's version, read once per client (RQ records it on every job it enqueues)."""
    version = getattr(redis, "_diffusetv_server_version", None)
    if version is None:
        from rq.utils import get_version

        version = get_version(redis)
        redis._diffusetv_server_version = version
    return version


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
