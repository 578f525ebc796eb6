"""The job record: one Redis hash per job, shared by the API (which creates it) and the worker.

Status changes go through `transition`, a compare-and-set in Lua, so that a cancel and a worker's
update can never overwrite each other.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.core import keys

GENERATE_FUNC = "worker.jobs.generate"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


FINAL = frozenset(s.value for s in JobStatus if s.final)

# KEYS[1] = job hash; ARGV = n_allowed, allowed..., then field/value pairs. Returns the old status,
# and writes only when it was one of the allowed ones.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
  if current == ARGV[i] then
    redis.call('HSET', KEYS[1], unpack(ARGV, n + 2))
    return current
  end
end
return current
"""


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class JobSpec:
    """What a worker needs to run one generation job (the RQ job's JSON kwargs)."""

    job_id: str
    seed: int
    steps: int
    eta: float
    model_ref: str  # name@version
    digest: str
    previews: bool = False
    run_key: str = ""  # the model run it leads (app.core.runs)

    def to_kwargs(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "seed": self.seed, "steps": self.steps, "eta": self.eta,
            "model_ref": self.model_ref, "digest": self.digest, "previews": self.previews, "run_key": self.run_key,
        }  # fmt: skip


def new_record(spec: JobSpec, model: dict, owner: str = "", now: float | None = None) -> dict[str, str]:
    """The hash fields of a freshly queued job."""
    return {
        "id": spec.job_id,
        "status": JobStatus.QUEUED.value,
        "params": json.dumps({"seed": spec.seed, "steps": spec.steps, "eta": spec.eta, "previews": spec.previews}),
        "model": json.dumps(model),
        "owner": owner,
        "run": spec.run_key,
        "created_at": repr(now if now is not None else time.time()),
        "attempts": "0",
    }


def transition(redis, job_id: str, allowed: tuple[JobStatus, ...], fields: dict[str, Any]) -> str | None:
    """Set `fields` (with e.g. a new status) only if the job's status is in `allowed`.

    Returns the status the job had (so the caller can tell whether it wrote), or None for no job.
    """
    flat: list[Any] = []
    for k, v in fields.items():
        flat += [k, v.value if isinstance(v, JobStatus) else v]
    old = redis.eval(_TRANSITION, 1, keys.job(job_id), len(allowed), *(s.value for s in allowed), *flat)
    return old.decode() if isinstance(old, bytes) else old


def read_record(redis, job_id: str) -> dict[str, str] | None:
    raw = redis.hgetall(keys.job(job_id))
    if not raw:
        return None
    return {k.decode(): v.decode() for k, v in raw.items()}
