"""`GET /jobs/{id}/events`: the job's events as Server-Sent Events, replayable from the start.

Events come from the job's Redis stream: `status`, `progress`, `preview`, and a final `status`, after
which the stream closes. `Last-Event-ID` resumes after that event; without it (or with one that is not a
stream id), a late client gets everything from the start. A resume at or past the final status gets that
status again and the close, at once. Keep-alive comments flow while nothing happens. The stream holds one of
the client's CLIENT_STREAMS leases while it lasts, renewed by the clock (app.core.leases).
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app import schemas
from app.auth import OwnerDep
from app.clients import ClientDep
from app.core import events, keys, leases
from app.core.jobs import FINAL, JobStatus, read_record
from app.deps import RedisDep
from app.queueing import queue_position
from app.reaper import reconcile
from app.routes.jobs import load_record, streams_full

router = APIRouter(tags=["jobs"], responses=schemas.error_responses(401, 404, 429, 503))
STREAM_ID_RE = re.compile(r"(\d{1,20})-(\d{1,20})")
MAX_STREAM_PART = 2**64 - 1  # Redis stream ids are two unsigned 64-bit integers
KEEPALIVE_S = 2.0


def resume_after(last_event_id: str | None) -> str:
    """The stream id to resume after: Last-Event-ID when it is a valid stream id, else the start (a full replay)."""
    match = STREAM_ID_RE.fullmatch(last_event_id or "")
    if match and all(int(part) <= MAX_STREAM_PART for part in match.groups()):
        return last_event_id
    return "0-0"


def sse(entry_id: str, event: str, data: dict) -> str:
    return f"id: {entry_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def read_after(redis, key: str, after: str) -> list[tuple[str, str, dict]]:
    got = redis.xread({key: after}, count=100)
    return [events.parse(raw_id, fields) for raw_id, fields in got[0][1]] if got else []


def final_event(redis, key: str, record: dict[str, str]) -> str:
    """The final status event of a job that has ended: its stream's last entry, or one made from the record."""
    newest = redis.xrevrange(key, "+", "-", count=1)
    if newest:
        entry_id, event, data = events.parse(*newest[0])
        if event == events.STATUS and data.get("status") in FINAL:
            return sse(entry_id, event, data)
    return f"event: {events.STATUS}\ndata: {json.dumps({'status': record['status']}, separators=(',', ':'))}\n\n"


async def stream(request: Request, job_id: str, record: dict[str, str], after: str, lease: leases.Lease):
    """Entries after `after`, then wait for more (holding no Redis connection), until the final status. A client
    that resumes at or past the final status gets it once more, and the stream closes at once. The lease is kept
    whenever due, events or not; a stream that lost it at the cap closes, and its client resumes it."""
    redis, waker, settings = request.app.state.redis, request.app.state.waker, request.app.state.settings
    key = keys.events(job_id)
    last = after
    try:
        while True:
            if lease.due() and not await run_in_threadpool(lease.keep):
                return
            entries = await run_in_threadpool(read_after, redis, key, last)
            for entry_id, event, data in entries:
                last = entry_id
                if event == events.STATUS and data.get("status") == JobStatus.QUEUED.value:
                    data["queue_position"] = await run_in_threadpool(queue_position, redis, record)
                yield sse(entry_id, event, data)
                if event == events.STATUS and data.get("status") in FINAL:
                    return
            if entries:
                continue
            current = await run_in_threadpool(read_record, redis, job_id)
            if current is None:
                return  # the job expired
            if current["status"] in FINAL:  # nothing after `last`, and the job has ended: past its final event
                yield await run_in_threadpool(final_event, redis, key, current)
                return
            if await request.is_disconnected():
                return
            if not await waker.wait(key, last, min(KEEPALIVE_S, lease.every_s)):
                yield ": keep-alive\n\n"
                await run_in_threadpool(reconcile, redis, current, settings.result_ttl)
    finally:
        with contextlib.suppress(Exception):
            await run_in_threadpool(lease.release)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
async def job_events(
    job_id: str,
    request: Request,
    redis: RedisDep,
    owner: OwnerDep,
    client: ClientDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """The job's events (status, progress, previews) as Server-Sent Events; replayable from the start."""
    record = await run_in_threadpool(load_record, redis, job_id, owner)
    settings = request.app.state.settings
    lease = await run_in_threadpool(leases.hold, redis, client, settings.client_streams, settings.stream_lease_s)
    if lease is None:
        raise streams_full(settings)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    body = stream(request, job_id, record, resume_after(last_event_id), lease)
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)
