"""Job events: a Redis stream per job, read by `GET /jobs/{id}/events` (Server-Sent Events).

`status` events are written by `app.core.jobs.transition` in the same Lua call as the status change;
`progress` and `preview` events are written here by the worker. The stream lives as long as the job.
"""

from __future__ import annotations

import json
from typing import Any

from app.core import keys
from app.core.jobs import MAX_EVENTS

STATUS, PROGRESS, PREVIEW = "status", "progress", "preview"


def emit(redis, job_id: str, event: str, data: dict[str, Any], ttl: int | None = None) -> None:
    """Append one event (to a pipeline or a client)."""
    redis.xadd(keys.events(job_id), {"event": event, "data": json.dumps(data)}, maxlen=MAX_EVENTS, approximate=True)
    if ttl:
        redis.expire(keys.events(job_id), ttl)


def preview_steps(steps: int, at_least: int = 1) -> set[int]:
    """Every ceil(steps/10)-th step (or every `at_least`-th, where more: PREVIEW_EVERY_STEPS, since a latent model's
    preview is a decode), and the last: at most 11 previews, whatever the speed."""
    every = max(-(-steps // 10), at_least)
    return {k for k in range(every, steps + 1, every)} | {steps}


def parse(entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[str, str, dict]:
    """(id, event, data) of a stream entry."""
    return entry_id.decode(), fields[b"event"].decode(), json.loads(fields[b"data"])
