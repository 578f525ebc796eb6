"""Generation jobs: submit, look up (optionally waiting), fetch the PNG, cancel."""

from __future__ import annotations

import re
import time
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from app import schemas
from app.auth import OwnerDep
from app.cancel import cancel
from app.clients import ClientDep
from app.core import keys, leases, objects
from app.core.jobs import FINAL, JobStatus, owned_record, read_record
from app.core.spec import GenerateSpec, InterpolateSpec, InvertSpec
from app.core.submission import NONE, Submission
from app.core.submit import replayed
from app.deps import RedisDep, ResultsDep, SettingsDep, StoreDep
from app.inputs import Reader, check_generate, check_interpolate, check_invert, read_generate, read_interpolate
from app.models import check_request, check_time, prompted, require_served, resolve_model, sized
from app.queueing import new_job, queue_position, submit
from app.reaper import reconcile
from app.results_http import Result, immutable, object_name, serve
from app.seeds import draw_seeds
from app.submissions import IdempotencyKey, idempotency, submission
from app.views import job_view
from model_store.bounds import DEFAULT_STRENGTH
from model_store.text import NO_TEXT
from model_store.vocabulary import normalise

router = APIRouter(tags=["jobs"], responses=schemas.error_responses(401, 429, 503))
WAKE_S = 1.0
STREAMS_RETRY_S = 2
PNG_RESPONSES = {  # the two PNG routes (image and strip) answer alike
    200: {"content": {"image/png": {}}},
    304: {"description": "not modified"},
    307: {
        "description": "with DIFFUSETV_RESULTS_REDIRECT (s3): the PNG is at `Location`, a presigned URL valid "
        "DIFFUSETV_RESULTS_PRESIGN_S seconds"
    },
    **schemas.error_responses(404, 409, 410, 503),
}
HEAD_RESPONSES = {  # a HEAD of either: its headers (ETag, Content-Length once known), answered by the API itself
    200: {"content": {"image/png": {}}, "description": "the PNG's headers, without the PNG"},
    304: {"description": "not modified"},
    **schemas.error_responses(404, 409, 410, 503),
}
PREVIEW_RE = re.compile(r"[0-9a-f]{64}")
MAX_WAIT_S = 30.0
Wait = Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="block up to this many seconds until the job ends")]


def load_record(redis, job_id: str, owner: str) -> dict[str, str]:
    """The job's record; 404 for a malformed id (Redis untouched), an unknown or expired one, or another key's."""
    record = owned_record(redis, job_id, owner)
    if record is None:
        raise HTTPException(404, "no such job")
    return record


async def wait_for_end(
    request: Request, redis, job_id: str, owner: str, client: str, wait: float, ttl: int
) -> dict[str, str]:
    """The job's record, once it is final or `wait` seconds have passed. While it waits it holds no Redis
    connection and no thread (app.waker wakes it on the job's events: every status change is one, so a finished
    job answers at once); at least every WAKE_S it looks anyway. A client has at most CLIENT_STREAMS waits and
    event streams open at once: past that, 429. The wait's lease is kept whenever due, as a stream's is; a wait
    that lost it at the cap answers early, with the record as it is."""
    if not keys.valid_job_id(job_id):
        raise HTTPException(404, "no such job")  # before any Redis call, as load_record promises
    settings = request.app.state.settings
    stream = keys.events(job_id)
    newest = await run_in_threadpool(redis.xrevrange, stream, "+", "-", 1) if wait > 0 else []
    last = newest[0][0].decode() if newest else "0-0"  # events before the record was read are reflected in it
    record = await run_in_threadpool(current_record, redis, job_id, owner, ttl)
    if record["status"] in FINAL or wait <= 0:
        return record
    lease = await run_in_threadpool(leases.hold, redis, client, settings.client_streams, settings.stream_lease_s)
    if lease is None:
        raise streams_full(settings)
    try:
        deadline = time.monotonic() + wait
        while record["status"] not in FINAL and (left := deadline - time.monotonic()) > 0:
            if lease.due() and not await run_in_threadpool(lease.keep):
                break
            await request.app.state.waker.wait(stream, last, min(left, WAKE_S, lease.every_s))
            newest = await run_in_threadpool(redis.xrevrange, stream, "+", "-", 1)
            last = newest[0][0].decode() if newest else last
            record = await run_in_threadpool(current_record, redis, job_id, owner, ttl)
    finally:
        await run_in_threadpool(lease.release)
    return record


def current_record(redis, job_id: str, owner: str, ttl: int) -> dict[str, str]:
    return reconcile(redis, load_record(redis, job_id, owner), ttl)


def streams_full(settings) -> HTTPException:
    return HTTPException(
        429,
        f"this client has {settings.client_streams} event streams and long polls open (DIFFUSETV_CLIENT_STREAMS); "
        "close one or retry later",
        headers={"Retry-After": str(STREAMS_RETRY_S)},
    )


def view(redis, record: dict[str, str]) -> schemas.Job:
    position = queue_position(redis, record) if record["status"] == JobStatus.QUEUED.value else None
    return job_view(record, position)


def queued(redis, settings, job, client: str, response: Response, what: Submission = NONE) -> schemas.Job:
    """Submit the job (app.queueing.submit), point `Location` at it and answer its view: with an Idempotency-Key
    already used for this request, the job that it made, as it is now."""
    job_id = submit(redis, settings, job, client, what)
    response.headers["Location"] = f"/jobs/{job_id}"
    return view(redis, load_record(redis, job_id, job.record["owner"]))


def replay(redis, client: str, owner: str, route: str, body, key: str | None, response: Response) -> schemas.Job | None:
    """With an Idempotency-Key this same request already used, the job it made, as it is now (app.core.submit.replayed),
    before the request's other checks: a retry gets its job even when they would now refuse it (no live worker, a
    receiver gone). None otherwise: the request goes on, and the submit script decides."""
    job_ids = replayed(redis, idempotency(client, route, body, key))
    record = owned_record(redis, job_ids[0], owner) if job_ids else None
    if record is None:
        return None
    response.headers["Location"] = f"/jobs/{job_ids[0]}"
    return view(redis, record)


def reader(request: Request, redis, owner: str, manifest, size: dict[str, int]) -> Reader:
    """The request's reader of pictures and latents (app.inputs), for its model at its size."""
    settings = request.app.state.settings
    where = (size.get("width"), size.get("height"))
    return Reader(request.app.state.decodes, settings, redis, request.app.state.results, owner, manifest, where)


def offered_model(store, settings, body: schemas.GenerateRequest | schemas.InterpolateRequest | schemas.InvertRequest):
    """The request's model: known, of a served kind that takes the request's fields. Whether a live worker serves
    it is asked last (require_served), once the whole request is valid: a bad request is a 422, worker or not."""
    manifest = resolve_model(store, body.model, settings)
    check_request(manifest, body.steps, body.model_fields_set - schemas.COMMON_FIELDS, body.sampler)
    return manifest


PICTURE_ERRORS = schemas.error_responses(404, 408, 409, 410, 413, 415)  # 404, 409, 410: a job named as an input


@router.post("/generate", status_code=202, response_model=schemas.Job, responses=PICTURE_ERRORS)
def generate(
    body: schemas.GenerateRequest,
    request: Request,
    response: Response,
    redis: RedisDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: OwnerDep,
    client: ClientDep,
    idempotency_key: IdempotencyKey = None,
) -> schemas.Job:
    """Queue a generation job (DDIM, or the request's `sampler`): from a seed's noise, a picture (`image`, `strength`;
    with `mask`, inpainting) or an inversion's latent; poll `Location` for it. 503 when no live worker serves the
    model."""
    if (done := replay(redis, client, owner, "/generate", body, idempotency_key, response)) is not None:
        return done
    manifest = offered_model(store, settings, body)
    what = submission(redis, settings, owner, client, "/generate", body, idempotency_key)
    body = draw_seeds(body)  # after the key's fingerprint: a retry without a seed gets the same job
    check_generate(body)
    text = prompted(manifest, body.prompt, body.guidance, negative_prompt=body.negative_prompt)
    size = sized(manifest, body.width, body.height)
    inputs = read_generate(reader(request, redis, owner, manifest, size), body)
    strength = {"strength": DEFAULT_STRENGTH if body.strength is None else body.strength} if body.image else {}
    spec = GenerateSpec.from_request(body, manifest, **text.fields(), **size, **inputs.fields, **strength)
    check_time(settings, manifest, spec, "steps")
    require_served(redis, manifest)
    job = new_job(settings, spec, manifest, owner, text.notes(), inputs.blobs)
    return queued(redis, settings, job, client, response, what)


@router.post("/interpolate", status_code=202, response_model=schemas.Job, responses=PICTURE_ERRORS)
def interpolate(
    body: schemas.InterpolateRequest,
    request: Request,
    response: Response,
    redis: RedisDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: OwnerDep,
    client: ClientDep,
    idempotency_key: IdempotencyKey = None,
) -> schemas.Job:
    """Queue an interpolation: DDIM at eta 0 (or the request's `sampler`) from the spherical walk between two ends'
    noises, each a seed's, a picture's inversion or an inversion's latent."""
    if (done := replay(redis, client, owner, "/interpolate", body, idempotency_key, response)) is not None:
        return done
    manifest = offered_model(store, settings, body)
    what = submission(redis, settings, owner, client, "/interpolate", body, idempotency_key)
    body = draw_seeds(body)
    check_interpolate(body)
    text = prompted(manifest, body.prompt, body.guidance, negative_prompt=body.negative_prompt)
    size = sized(manifest, body.width, body.height)
    if normalise(body.prompt_b or "") and text.prompt is None:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "prompt_b"), "msg": "prompt_b needs a prompt to start from"}]
        )
    # prompt_b keeps prompt's guidance; an empty one is none: the condition stays `prompt` all along
    end = prompted(manifest, body.prompt_b, None, "prompt_b") if body.prompt_b is not None else NO_TEXT
    inputs = read_interpolate(reader(request, redis, owner, manifest, size), body)
    spec = InterpolateSpec.from_request(body, manifest, **text.fields(), prompt_b=end.prompt, **size, **inputs.fields)
    check_time(settings, manifest, spec, "frames")
    require_served(redis, manifest)
    notes = text.notes()
    if ignored := list(dict.fromkeys(text.ignored + end.ignored)):
        notes["ignored_words"] = ignored
    if end.truncated_tokens:
        notes["prompt_b_truncated_tokens"] = end.truncated_tokens
    return queued(
        redis, settings, new_job(settings, spec, manifest, owner, notes, inputs.blobs), client, response, what
    )


@router.post("/invert", status_code=202, response_model=schemas.Job, responses=PICTURE_ERRORS)
def invert(
    body: schemas.InvertRequest,
    request: Request,
    response: Response,
    redis: RedisDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: OwnerDep,
    client: ClientDep,
    idempotency_key: IdempotencyKey = None,
) -> schemas.Job:
    """Queue an inversion (DDIM, or the request's `sampler`): from the picture back to the x_T whose generation draws
    it (`GET /jobs/{id}/latent`), then forward again: the job's image is the reconstruction. A text model inverts with
    its prompt at guidance 1 unless `guidance` says otherwise."""
    if (done := replay(redis, client, owner, "/invert", body, idempotency_key, response)) is not None:
        return done
    manifest = offered_model(store, settings, body)
    what = submission(redis, settings, owner, client, "/invert", body, idempotency_key)
    check_invert(body)
    guidance = body.guidance if body.guidance is not None else (1.0 if normalise(body.prompt or "") else None)
    text = prompted(manifest, body.prompt, guidance, negative_prompt=body.negative_prompt)
    size = sized(manifest, body.width, body.height)
    pictures_in = reader(request, redis, owner, manifest, size)
    pictures_in.picture(body.image, "image")
    inputs = pictures_in.inputs
    spec = InvertSpec.from_request(body, manifest, **text.fields(), **size, **inputs.fields)
    check_time(settings, manifest, spec, "steps")
    require_served(redis, manifest)
    job = new_job(settings, spec, manifest, owner, text.notes(), inputs.blobs)
    return queued(redis, settings, job, client, response, what)


@router.get(
    "/jobs/{job_id}/latent",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, **schemas.error_responses(404, 409, 410, 503)},
)
async def get_latent(
    job_id: str,
    request: Request,
    redis: RedisDep,
    settings: SettingsDep,
    results: ResultsDep,
    owner: OwnerDep,
    client: ClientDep,
    wait: Wait = 0,
) -> Response:
    """An inversion's latent as safetensors: one float32 tensor `latent` (C, H, W), and in its metadata the model's
    identity and ref, the steps, the prompt and guidance it was inverted with. Never a pickle. 404 for another kind of
    job, 409 while not succeeded."""
    record = await wait_for_end(request, redis, job_id, owner, client, wait, settings.result_ttl)
    if record.get("kind") != "invert":
        raise HTTPException(404, "not an inversion job")
    if record["status"] != JobStatus.SUCCEEDED.value:
        raise HTTPException(409, f"job is {record['status']}; the latent exists once it has succeeded")
    digest = record.get("latent_sha256", "")
    attachment = {"Content-Disposition": f'attachment; filename="diffusetv-{job_id}.safetensors"'}
    what = f"the latent of job {job_id}"
    result = Result(object_name(objects.LATENT, digest), digest, what, "application/octet-stream", attachment)
    return await run_in_threadpool(serve, results, redis, settings, result, "GET", None)


@router.get("/jobs/{job_id}", response_model=schemas.Job, responses=schemas.error_responses(404))
async def get_job(
    job_id: str, request: Request, redis: RedisDep, settings: SettingsDep, owner: OwnerDep, client: ClientDep,
    wait: Wait = 0,
) -> schemas.Job:  # fmt: skip
    """The job's status, progress and result link; with `wait`, block until it ends (at most 30 s)."""
    record = await wait_for_end(request, redis, job_id, owner, client, wait, settings.result_ttl)
    return await run_in_threadpool(view, redis, record)


@router.head("/jobs/{job_id}/image.png", response_class=Response, responses=HEAD_RESPONSES, name="head_image")
@router.get("/jobs/{job_id}/image.png", response_class=Response, responses=PNG_RESPONSES)
async def get_image(
    job_id: str,
    request: Request,
    redis: RedisDep,
    settings: SettingsDep,
    results: ResultsDep,
    owner: OwnerDep,
    client: ClientDep,
    wait: Wait = 0,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The PNG of a succeeded job; ETag is its sha256. 409 while it has not succeeded. With
    DIFFUSETV_RESULTS_REDIRECT (s3) a GET is a 307 to the PNG's presigned URL; a HEAD is always answered here."""
    record = await wait_for_end(request, redis, job_id, owner, client, wait, settings.result_ttl)
    result = png_result(record, "sha256", f"the image of job {job_id}", settings)
    return await run_in_threadpool(serve, results, redis, settings, result, request.method, if_none_match)


def png_result(record: dict[str, str], field: str, what: str, settings) -> Result:
    """A succeeded job's PNG named by the record's `field` (its digest): immutable, and a GET may redirect to it.
    409 while the job has not succeeded."""
    if record["status"] != JobStatus.SUCCEEDED.value:
        raise HTTPException(409, f"job is {record['status']}; the image exists once it has succeeded")
    digest = record.get(field, "")
    return Result(object_name(objects.PNG, digest), digest, what, "image/png", immutable(settings), redirect=True)


@router.head("/jobs/{job_id}/strip.png", response_class=Response, responses=HEAD_RESPONSES, name="head_strip")
@router.get("/jobs/{job_id}/strip.png", response_class=Response, responses=PNG_RESPONSES)
async def get_strip(
    job_id: str,
    request: Request,
    redis: RedisDep,
    settings: SettingsDep,
    results: ResultsDep,
    owner: OwnerDep,
    client: ClientDep,
    wait: Wait = 0,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """An interpolation's frames side by side as one PNG. 404 for a generation job, 409 while not succeeded."""
    record = await wait_for_end(request, redis, job_id, owner, client, wait, settings.result_ttl)
    if record.get("kind") != "interpolate":
        raise HTTPException(404, "not an interpolation job")
    result = png_result(record, "strip_sha256", f"the strip of job {job_id}", settings)
    return await run_in_threadpool(serve, results, redis, settings, result, request.method, if_none_match)


@router.get(
    "/jobs/{job_id}/previews/{sha256}.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}},
        304: {"description": "not modified"},
        **schemas.error_responses(404, 410, 503),
    },
)
async def get_preview(
    job_id: str,
    sha256: str,
    redis: RedisDep,
    settings: SettingsDep,
    results: ResultsDep,
    owner: OwnerDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """One preview of the job (a `preview` event's `url` where the result store is not Redis): a PNG named by its
    sha256, which is its ETag. 404 for another key's job, or a preview there is not (or no longer)."""
    if PREVIEW_RE.fullmatch(sha256) is None:
        raise HTTPException(404, "no such preview")  # before any Redis call, as for a malformed job id
    return await run_in_threadpool(preview, results, redis, settings, job_id, sha256, owner, if_none_match)


def preview(results, redis, settings, job_id: str, sha256: str, owner: str, if_none_match: str | None) -> Response:
    """The answer for preview `sha256` of job `job_id`, as `owner`."""
    load_record(redis, job_id, owner)
    name = objects.name(objects.PNG, sha256)
    if objects.state(redis, name) is None:
        raise HTTPException(404, "no such preview")
    result = Result(name, sha256, f"preview {sha256} of job {job_id}", "image/png", immutable(settings))
    return serve(results, redis, settings, result, "GET", if_none_match)


@router.delete(
    "/jobs/{job_id}", status_code=202, response_model=schemas.Job, responses=schemas.error_responses(404, 409)
)
def delete_job(job_id: str, redis: RedisDep, settings: SettingsDep, owner: OwnerDep) -> schemas.Job:
    """Cancel a queued job, or stop a running one at its next step. 409 once it has ended."""
    record = load_record(redis, job_id, owner)
    if not cancel(redis, record, repr(time.time()), settings.result_ttl):
        raise HTTPException(409, f"job already {read_record(redis, job_id)['status']}")
    return view(redis, load_record(redis, job_id, owner))
