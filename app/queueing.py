"""Putting jobs on the queue (RQ, JSON serializer), and finding their place in it.

As rq's `Queue.create_job` builds the `Job` that `enqueue_job` takes, `new_job` builds a job from its spec
(app.core.spec) and `submit` puts it on the queue (`submit_many` puts several, all or none): it is answered from
the result cache, joins an identical run in flight, or leads a new run, atomically (app.core.submit), or is refused
with a 429 that says which bound was reached.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from fastapi import HTTPException
from rq import Queue
from rq.serializers import JSONSerializer

from app.core import keys, objects, runs
from app.core.jobs import new_record
from app.core.results import StoreUnavailable, open_store
from app.core.settings import Settings
from app.core.spec import Spec
from app.core.submission import NONE, Submission
from app.core.submit import Admission, Bounds, Entry, admit
from app.core.timeouts import job_timeout
from app.models import image_shape, model_record
from app.submissions import HEADER_LOC, invalid
from model_store import Manifest

QUEUE_FULL_RETRY_S = 5
STORE_RETRY_S = 5
INPUT_WINDOW_S = 5.0  # how long a submit tries to store its inputs before it answers 503
INPUT_HOLD_S = 600  # an input stored for a submission that the script refuses is swept after this (the script keeps
# the admitted ones as long as their jobs)
MISMATCH = "this Idempotency-Key was used with another request body"
FOLLOWERS_RETRY_S = 2


def queue_for(redis, model_ref: str) -> Queue:
    return Queue(keys.queue_name(model_ref), connection=redis, serializer=JSONSerializer)


@dataclass(frozen=True)
class NewJob:
    """A job before it is queued: its spec, its record, the bytes its results will take, its RQ timeout and its inputs
    (app.inputs: digest -> blob, stored with it)."""

    spec: Spec
    record: dict[str, str]
    cost: int
    timeout: int  # seconds (app.core.timeouts.job_timeout)
    inputs: dict[str, bytes] = field(default_factory=dict)


def new_job(
    settings: Settings,
    spec: Spec,
    manifest: Manifest,
    owner: str = "",
    notes: dict | None = None,
    inputs: dict[str, bytes] | None = None,
) -> NewJob:
    """The job of `spec` for the model of `manifest`, owned by `owner`; `notes`: how its prompt was read (the
    prompt's unknown words, its tokens cut); `inputs`: the blobs of the digests its spec names (Spec.inputs)."""
    inputs = dict(inputs or {})
    if set(inputs) != set(spec.inputs()):
        raise ValueError(f"a job's inputs are its spec's: {sorted(inputs)} given for {sorted(spec.inputs())}")
    record = new_record(spec, model_record(manifest), owner, notes=notes)
    cost = spec.cost(*image_shape(manifest, spec.width, spec.height))
    return NewJob(spec, record, cost, job_timeout(settings, manifest, spec), inputs)


def current_engine(redis, model_ref: str) -> str:
    """`device/precision/kernels/encoder` of the workers serving the model, or PENDING_ENGINE while none has claimed
    it."""
    engine = redis.get(keys.engine(model_ref))
    return engine.decode() if engine else runs.PENDING_ENGINE


def submit(redis, settings: Settings, job: NewJob, client: str = "", submission: Submission = NONE) -> str:
    """Submit one job (submit_many); returns its id, or with an Idempotency-Key already used for this request, the
    id of the job it made."""
    return submit_many(redis, settings, [job], client, submission)[0]


def submit_many(
    redis, settings: Settings, jobs: Sequence[NewJob], client: str = "", submission: Submission = NONE
) -> list[str]:
    """Answer each job from the result cache, join an identical run in flight (or one an earlier job of the list
    leads), or queue a new run: all of them or none, atomically (app.core.submit); 429 past a bound, 422 for an
    Idempotency-Key used with another request. Returns the jobs' ids: with the key already used for this request,
    the ids of the jobs it made, and nothing new is queued or charged.

    Before any worker has claimed the model, its engine is pending: identical jobs still join one run (their
    key names the pending engine), but none is answered from the cache, since no result can be known. The
    submission's webhook fields go into each job's record, never into its spec or engine key."""
    now = time.time()
    fields = submission.record_fields(settings)
    engines: dict[str, str] = {}
    entries, commands = [], []
    for job in jobs:
        spec = job.spec
        engine = engines.get(spec.model_ref) or engines.setdefault(
            spec.model_ref, current_engine(redis, spec.model_ref)
        )
        key = runs.engine_key(spec, engine)  # identical jobs share one model run and its cache entry (app.core.runs)
        cache_key = key if engine != runs.PENDING_ENGINE else ""
        queue = queue_for(redis, spec.model_ref)
        record = {**job.record, **fields}
        inputs = {digest: len(blob) for digest, blob in job.inputs.items()}
        entries.append(Entry(spec.job_id, record, job.cost, queue.key, key, cache_key, spec.compute(), inputs))
        commands.append(rq_commands(redis, queue, spec, settings, job.timeout))
    bounds = Bounds.of(settings, client, now, max(job.timeout for job in jobs))
    store_inputs(redis, settings, jobs)
    admission = admit(redis, entries, bounds, commands, now, submission.idempotency)
    refuse(admission, settings)
    return list(admission.job_ids)


def store_inputs(redis, settings: Settings, jobs: Sequence[NewJob]) -> None:
    """The jobs' inputs into the result store (app.core.objects), before the submit script publishes them with the
    jobs: reserved for INPUT_HOLD_S, so that what a refused or abandoned submission stored is swept soon. 503 when the
    store does not take them."""
    blobs = {digest: blob for job in jobs for digest, blob in job.inputs.items()}
    if not blobs:
        return
    store = open_store(settings, redis)
    try:
        for digest, blob in blobs.items():
            objects.put(redis, store, objects.name(objects.INPUT, digest), blob, INPUT_HOLD_S, INPUT_WINDOW_S)
    except StoreUnavailable as exc:
        raise HTTPException(503, f"{exc}; retry later", headers={"Retry-After": str(STORE_RETRY_S)}) from None


def refuse(admission: Admission, settings: Settings) -> None:
    """Nothing for admitted jobs; a 422 naming the Idempotency-Key header for a key used with another request; else
    a 429 with Retry-After that says which bound was reached."""
    if admission.admitted:
        return
    if admission.outcome == "mismatch":
        raise invalid(HEADER_LOC, MISMATCH)
    if admission.outcome == "inputs":
        raise HTTPException(503, "an input was swept while it was stored; retry", headers={"Retry-After": "1"})
    if admission.outcome == "queue_full":
        raise too_many("the queue is full; retry later", QUEUE_FULL_RETRY_S)
    if admission.outcome == "followers":
        raise too_many(
            f"{settings.max_followers} other requests already wait for this same image (DIFFUSETV_MAX_FOLLOWERS); "
            "retry later, when it is answered from the cache",
            FOLLOWERS_RETRY_S,
        )
    limit = {
        "jobs": f"{settings.client_jobs} jobs",
        "bytes": f"{settings.client_bytes} bytes of results",
        "compute": f"{settings.client_compute} image-steps of model work (DIFFUSETV_CLIENT_COMPUTE)",
    }[admission.detail]
    raise too_many(
        f"this client's quota of {limit} per {settings.quota_window_s} s is used up; retry later",
        int(admission.status or settings.quota_window_s),
    )


def too_many(message: str, retry_after: int) -> HTTPException:
    return HTTPException(429, message, headers={"Retry-After": str(max(1, retry_after))})


def rq_commands(redis, queue: Queue, spec: Spec, settings: Settings, timeout: int) -> list[tuple]:
    """The Redis commands with which RQ would enqueue this job (its hash, TTL and queue entry) with a `timeout` of
    so many seconds, recorded on an unsent pipeline so that the submit script can run them with everything else."""
    queue.redis_server_version = server_version(redis)
    pipe = redis.pipeline(transaction=False)
    queue.enqueue_call(
        spec.FUNC,
        kwargs=spec.to_kwargs(),
        job_id=spec.job_id,
        timeout=timeout,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.result_ttl,
        ttl=settings.pending_ttl(timeout),
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
