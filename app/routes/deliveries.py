"""A job's webhook deliveries (app.core.hooks enqueues them, the notifier sends them): each one's state and attempts."""

from __future__ import annotations

import json

from fastapi import APIRouter

from app import schemas
from app.auth import OwnerDep
from app.core import keys
from app.deps import RedisDep
from app.routes.jobs import load_record
from app.views import iso

router = APIRouter(tags=["jobs"], responses=schemas.error_responses(401, 429, 503))
FINAL_STATES = ("delivered", "failed", "dropped")  # dropped: a progress report superseded or never sent


@router.get("/jobs/{job_id}/deliveries", response_model=schemas.DeliveryList, responses=schemas.error_responses(404))
def get_deliveries(job_id: str, redis: RedisDep, owner: OwnerDep) -> schemas.DeliveryList:
    """The job's webhook deliveries, oldest first, with every attempt: its time, status code or error, next try."""
    load_record(redis, job_id, owner)
    ids = [i.decode() for i in redis.lrange(keys.job_deliveries(job_id), 0, -1)]
    pipe = redis.pipeline(transaction=False)
    for delivery_id in ids:
        pipe.hmget(keys.delivery(delivery_id), "id", "type", "state", "url", "timestamp", "next_at")
        pipe.zscore(keys.DELIVERIES_DUE, delivery_id)
        pipe.lrange(keys.delivery_attempts(delivery_id), 0, -1)
    replies = pipe.execute()
    views = (delivery_view(*replies[i : i + 3]) for i in range(0, len(replies), 3))
    return schemas.DeliveryList(deliveries=[v for v in views if v is not None])


def delivery_view(fields: list[bytes | None], due: float | None, attempts: list[bytes]) -> schemas.Delivery | None:
    """One delivery from its hash's fields, its due time and its attempts; None once it has expired."""
    msg_id, type_, state, url, created, next_at = (f.decode() if f is not None else None for f in fields)
    if msg_id is None:
        return None
    state = state if state in FINAL_STATES else "pending"
    # while pending, it is due on DELIVERIES_DUE (at its next retry, or where a notifier's claim on it lapses)
    due_at = repr(due) if due is not None else next_at
    next_attempt = due_at if state == "pending" else None
    return schemas.Delivery(
        id=msg_id,
        type=type_ or "",
        state=state,
        url=url or "",
        created_at=iso(created) or "",
        next_attempt_at=iso(next_attempt),
        attempts=[attempt_view(json.loads(a)) for a in attempts],
    )


def attempt_view(attempt: dict) -> schemas.DeliveryAttempt:
    """One attempt as the notifier recorded it: {at, status_code, error, next_at} (epoch seconds)."""
    return schemas.DeliveryAttempt(
        at=iso(str(attempt["at"])) or "",
        status_code=attempt.get("status_code"),
        error=attempt.get("error"),
        next_attempt_at=iso(str(attempt["next_at"])) if attempt.get("next_at") is not None else None,
    )
