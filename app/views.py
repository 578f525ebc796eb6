"""From a job record (Redis hash fields) to the HTTP job view."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from app import schemas
from app.core.jobs import JobStatus


def iso(epoch: str | None) -> str | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(float(epoch), tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_view(record: dict[str, str], queue_position: int | None = None) -> schemas.Job:
    status = record["status"]
    engine = json.loads(record["engine"]) if record.get("engine") else None
    progress = json.loads(record["progress"]) if record.get("progress") else None
    succeeded = status == JobStatus.SUCCEEDED.value
    kind = record.get("kind") or "generate"
    return schemas.Job(
        id=record["id"],
        kind=kind,
        status=status,
        params=json.loads(record["params"]),
        model=json.loads(record["model"]),
        engine=engine,
        progress=progress,
        queue_position=queue_position if status == JobStatus.QUEUED.value else None,
        batch_size=int(record["batch_size"]) if record.get("batch_size") else None,
        created_at=iso(record["created_at"]),
        started_at=iso(record.get("started_at")),
        finished_at=iso(record.get("finished_at")),
        error=record.get("error") or None,
        image_url=f"/jobs/{record['id']}/image.png" if succeeded else None,
        strip_url=f"/jobs/{record['id']}/strip.png" if succeeded and kind == "interpolate" else None,
        latent_url=f"/jobs/{record['id']}/latent" if succeeded and kind == "invert" else None,
        events_url=f"/jobs/{record['id']}/events",
    )
