"""POST /v1/images/generations: OpenAI's images API, so that the official SDKs work unchanged.

A request is `n` generation jobs, seeds `seed`..`seed`+n-1, each exactly the job POST /generate makes of those
fields (the same engine key: the same cache entry and the same bytes), admitted all or none. The route then waits
for them, as a long poll does (app.routes.jobs.wait_for_end: the waker, no pooled connection while idle, one stream
lease taken before anything is queued), at most DIFFUSETV_OPENAI_WAIT_S. Past that it answers a 408 naming the jobs,
with `x-should-retry: false`: the SDKs retry a 408, and each retry would queue `n` more jobs. So does any error
once the jobs are admitted (Redis or the result store gone, the pool exhausted, an image missing from the store):
it names them, and is not retried. Errors are in OpenAI's shape (app.openai_errors).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from app import openai_schemas as schemas
from app.auth import OwnerDep
from app.clients import ClientDep
from app.core import keys, leases, objects
from app.core.jobs import FINAL, JobStatus
from app.core.results import ResultStore
from app.core.settings import Settings
from app.core.spec import GenerateSpec
from app.core.submit import replayed
from app.deps import RedisDep, ResultsDep, SettingsDep, StoreDep
from app.models import check_request, check_time, prompted, require_served, resolve_model
from app.openai_errors import error_body
from app.queueing import NewJob, new_job, submit_many
from app.results_http import MISSING, object_name, read
from app.routes.jobs import WAKE_S, current_record, streams_full
from app.seeds import draw_seed
from app.submissions import IdempotencyKey, idempotency, invalid, submission
from model_store import Manifest, Store, kinds, samplers
from model_store.bounds import MAX_SEED

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"])
ROUTE = "/v1/images/generations"  # the Idempotency-Key's fingerprint names it
SIZE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")
TEXT_FIELDS = ("prompt", "guidance", "negative_prompt")  # a prompt-free model takes none of them
NO_RETRY = {"x-should-retry": "false"}
RESPONSES = {
    **schemas.error_responses(400, 401, 404, 408, 409, 413, 415, 429, 500, 503),
    410: {
        "model": schemas.OpenAIError,
        "description": f"an image's object {MISSING} (x-should-retry: false)",
    },
    503: {
        "model": schemas.OpenAIError,
        "description": f"{schemas.ERROR_DESCRIPTIONS[503]}; or, once the jobs are admitted, Redis or the result "
        "store is unavailable (x-should-retry: false)",
    },
}


def refuse(name: str, message: str, given: object = None):
    """A 400 naming body field `name`."""
    return invalid(("body", name), message, given)


def sized(manifest: Manifest, size: str | None) -> dict[str, int]:
    """The spec's size fields for `size` ("WxH", "auto" or None: the model's default); a 400 naming `size` for one the
    model does not make. A model of one size takes its own size only."""
    kind = kinds.of(manifest)
    if size in (None, "auto"):
        return kind.size_fields(manifest, None, None)
    height, width, _ = kind.image_shape(manifest)
    made = [(width, height)] if kind.sizes is None else kind.sizes(manifest)
    listed = ", ".join(f"{w}x{h}" for w, h in made)
    match = SIZE.fullmatch(size)
    if match is None or (int(match[1]), int(match[2])) not in made:
        raise refuse("size", f"{manifest.ref} makes {listed} (WIDTHxHEIGHT) or auto, not {size!r}", size)
    return kind.size_fields(manifest, int(match[1]), int(match[2])) if kind.sizes is not None else {}


def check_openai(body: schemas.ImageGenerationRequest) -> None:
    """400 naming the field for OpenAI options this API does not offer, and options that do not go together."""
    if body.stream:
        raise refuse("stream", "streaming is not supported: send stream false or leave it out", True)
    if body.output_format not in (None, "png"):
        raise refuse("output_format", "the images are PNGs: send output_format png or leave it out", body.output_format)
    if refused := samplers.refusal(body.sampler, body.eta):
        field, msg = refused
        raise refuse(field, msg, getattr(body, field))
    if body.seed is not None and body.seed + body.n - 1 > MAX_SEED:
        raise refuse("seed", f"the seeds seed..seed+n-1 must be at most {MAX_SEED}", body.seed)


def batch(body: schemas.ImageGenerationRequest, redis, settings: Settings, store: Store, owner: str) -> list[NewJob]:
    """The request's `n` jobs (seed `seed` or a drawn one, then the next ones), each the job POST /generate makes
    of the same fields; 400 (naming the field) for an invalid request, 503 when no live worker serves the model."""
    manifest = resolve_model(store, body.model, settings)
    check_openai(body)
    given = {name for name in TEXT_FIELDS if getattr(body, name) not in (None, "")}
    check_request(manifest, body.steps, given, body.sampler)
    size = sized(manifest, body.size)
    text = prompted(manifest, body.prompt or None, body.guidance, negative_prompt=body.negative_prompt)
    first = body.seed if body.seed is not None else min(draw_seed(), MAX_SEED - body.n + 1)
    specs = [GenerateSpec.from_request(body, manifest, seed=first + i, **text.fields(), **size) for i in range(body.n)]
    check_time(settings, manifest, specs[0], "steps")
    require_served(redis, manifest)
    return [new_job(settings, spec, manifest, owner, text.notes()) for spec in specs]


async def wait_for_all(request: Request, redis, job_ids: list[str], owner: str, lease: leases.Lease) -> list[dict]:
    """The jobs' records once each is final, or as they are after DIFFUSETV_OPENAI_WAIT_S (or once the lease is lost
    at the client's cap); stops at the first job that failed or was canceled, and once the client has hung up.
    Holds no connection while idle."""
    settings = request.app.state.settings
    deadline = time.monotonic() + settings.openai_wait_s
    records = []
    for job_id in job_ids:
        stream = keys.events(job_id)
        newest = await run_in_threadpool(redis.xrevrange, stream, "+", "-", 1)
        last = newest[0][0].decode() if newest else "0-0"
        record = await run_in_threadpool(current_record, redis, job_id, owner, settings.result_ttl)
        while record["status"] not in FINAL and (left := deadline - time.monotonic()) > 0:
            if lease.due() and not await run_in_threadpool(lease.keep):
                break
            await request.app.state.waker.wait(stream, last, min(left, WAKE_S, lease.every_s))
            if await request.is_disconnected():  # no one to answer: the 408 goes nowhere, the lease is given back
                return [*records, record]
            newest = await run_in_threadpool(redis.xrevrange, stream, "+", "-", 1)
            last = newest[0][0].decode() if newest else last
            record = await run_in_threadpool(current_record, redis, job_id, owner, settings.result_ttl)
        records.append(record)
        if record["status"] != JobStatus.SUCCEEDED.value:
            break
    return records


def ended_badly(records: list[dict], job_ids: list[str], wait_s: float) -> JSONResponse | None:
    """None when every job succeeded; else the answer: 408 (not ready), 409 (canceled) or 500 (failed), all with
    `x-should-retry: false`, naming the jobs."""
    last = records[-1]
    status = last["status"]
    if len(records) == len(job_ids) and status == JobStatus.SUCCEEDED.value:
        return None
    ids = ", ".join(job_ids)
    if status == JobStatus.FAILED.value:
        code, message = 500, f"job {last['id']} failed: {last.get('error') or 'no details'} (jobs: {ids})"
    elif status == JobStatus.CANCELED.value:
        code, message = 409, f"job {last['id']} was canceled (jobs: {ids})"
    else:
        code = 408
        message = f"the images were not ready within {wait_s:g} s; the jobs go on: GET /jobs/{{id}} (jobs: {ids})"
    return JSONResponse(error_body(code, message, jobs=job_ids), code, headers=NO_RETRY)


def image_url(settings: Settings, job_id: str) -> str:
    """The job's PNG: absolute with DIFFUSETV_PUBLIC_URL (never from the request's Host), else relative."""
    return f"{settings.public_url or ''}/jobs/{job_id}/image.png"


def images(results: ResultStore, settings: Settings, body: schemas.ImageGenerationRequest, records: list[dict]) -> list:
    """The response's images: their URLs, or their PNGs in base64 read from the result store (410 for one missing
    from it, 503 while it does not answer)."""
    prompt = json.loads(records[0]["params"]).get("prompt") or ""
    if body.response_format == "url":
        return [schemas.ImageData(url=image_url(settings, r["id"]), revised_prompt=prompt) for r in records]
    pngs = [read(results, object_name(objects.PNG, r.get("sha256")), f"the image of job {r['id']}") for r in records]
    return [schemas.ImageData(b64_json=base64.b64encode(png).decode(), revised_prompt=prompt) for png in pngs]


@router.post(
    "/images/generations",
    response_model=schemas.ImagesResponse,
    responses=RESPONSES,
)
async def create_images(
    body: schemas.ImageGenerationRequest,
    request: Request,
    redis: RedisDep,
    settings: SettingsDep,
    store: StoreDep,
    results: ResultsDep,
    owner: OwnerDep,
    client: ClientDep,
    idempotency_key: IdempotencyKey = None,
) -> schemas.ImagesResponse | JSONResponse:
    """OpenAI's image generation: `n` images of the model, waited for (at most DIFFUSETV_OPENAI_WAIT_S). With an
    Idempotency-Key, the same request again waits for the same jobs."""
    known = await run_in_threadpool(replayed, redis, idempotency(client, ROUTE, body, idempotency_key))
    if known is None:  # a retry of an admitted request skips the checks: it gets its jobs, whatever they say now
        what = submission(redis, settings, owner, client, ROUTE, body, idempotency_key)  # before the seed is drawn
        jobs = await run_in_threadpool(batch, body, redis, settings, store, owner)
    lease = await run_in_threadpool(
        leases.hold, redis, client, settings.client_streams, settings.stream_lease_s
    )  # before anything is queued: a 429 here makes no job
    if lease is None:
        raise streams_full(settings)
    job_ids: list[str] = known or []
    try:
        try:
            job_ids = known or await run_in_threadpool(submit_many, redis, settings, jobs, client, what)
            records = await wait_for_all(request, redis, job_ids, owner, lease)
        finally:
            await run_in_threadpool(lease.release)
        if (refused := ended_badly(records, job_ids, settings.openai_wait_s)) is not None:
            return refused
        params = json.loads(records[0]["params"])  # a replayed key's jobs have the seed drawn for them then
        data = await run_in_threadpool(images, results, settings, body, records)
        return schemas.ImagesResponse(created=int(time.time()), data=data, seed=params["seed"], jobs=job_ids)
    except Exception as error:
        if not job_ids:  # nothing was queued: the app's handlers answer it, and a retry is safe
            raise
        return after_admission(error, job_ids)


def after_admission(error: Exception, job_ids: list[str]) -> JSONResponse:
    """An error once the jobs were admitted, naming them, with `x-should-retry: false`: the SDKs retry a 5xx, and
    each retry (with no Idempotency-Key) would queue `n` more jobs. An HTTPException keeps its status; Redis's errors
    are a 503, anything else a 500."""
    ids = ", ".join(job_ids)
    headers = NO_RETRY
    if isinstance(error, HTTPException):
        code, why = error.status_code, str(error.detail)
        headers = {**(error.headers or {}), **NO_RETRY}  # a 503's Retry-After, for a retry with its Idempotency-Key
    elif isinstance(error, RedisError):
        code, why = 503, "the service could not reach Redis"
    else:
        log.exception("error after admitting jobs %s", ids)
        code, why = 500, "internal error"
    message = f"{why}; the jobs were queued and go on: GET /jobs/{{id}} (jobs: {ids})"
    return JSONResponse(error_body(code, message, jobs=job_ids), code, headers=headers)
