"""`GET /jobs/{id}/events`: the job's events as Server-Sent Events, replayable from the start.

Events come from the job's Redis stream: `status`, `progress`, `preview`, and a final `status`, after
which the stream closes. `Last-Event-ID` resumes after that event; without it, a late client gets
everything from the start. Keep-alive comments flow while nothing happens.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app import schemas
from app.auth import OwnerDep
from app.core import events, keys
from app.core.jobs import FINAL, JobStatus, read_record
from app.deps import RedisDep
from app.queueing import queue_position, reconcile
from app.routes.jobs import load_record

router = APIRouter(tags=["jobs"], responses=schemas.error_responses(401, 404, 503))
STREAM_ID_RE = re.compile(r"\d{1,20}-\d{1,20}")
BLOCK_MS = 2000


def sse(entry_id: str, event: str, data: dict) -> str:
    return f"id: {entry_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def stream(request: Request, job_id: str, record: dict[str, str], after: str) -> AsyncIterator[str]:
    aredis = request.app.state.aredis
    redis = request.app.state.redis
    key = keys.events(job_id)
    last = after
    while not await request.is_disconnected():
        batch = await aredis.xread({key: last}, count=100, block=BLOCK_MS)
        if not batch:
            yield ": keep-alive\n\n"
            current = await run_in_threadpool(read_record, redis, job_id)
            if current is None:
                return  # the job expired
            await run_in_threadpool(reconcile, redis, current, request.app.state.settings.result_ttl)
            continue
        for raw_id, fields in batch[0][1]:
            entry_id, event, data = events.parse(raw_id, fields)
            last = entry_id
            if event == events.STATUS and data.get("status") == JobStatus.QUEUED.value:
                data["queue_position"] = await run_in_threadpool(queue_position, redis, record)
            yield sse(entry_id, event, data)
            if event == events.STATUS and data.get("status") in FINAL:
                return


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
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """The job's events (status, progress, previews) as Server-Sent Events; replayable from the start."""
    record = await run_in_threadpool(load_record, redis, job_id, owner)
    after = last_event_id if last_event_id and STREAM_ID_RE.fullmatch(last_event_id) else "0-0"
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(request, job_id, record, after), media_type="text/event-stream", headers=headers)
