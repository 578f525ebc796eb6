"""Canceling a job: it stops waiting at once; the run it waited for stops only when nobody else waits for it."""

from __future__ import annotations

import json

from rq.job import Job

from app.core import runs
from app.queueing import queue_for


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
