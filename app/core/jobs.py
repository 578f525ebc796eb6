"""The job record: one Redis hash per job, shared by the API (which creates it) and the worker.

Status changes go through `transition`, a compare-and-set in Lua, so that a cancel and a worker's
update can never overwrite each other.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from app.core import hooks, keys, objects

if TYPE_CHECKING:
    from app.core.spec import Spec


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

# KEYS[1] = job hash, KEYS[2] = its event stream; ARGV = the job id, status event JSON ('' for none), max stream
# length, n_allowed, allowed..., then field/value pairs. Returns the old status, and writes (the fields, then the
# status event, then the webhook delivery a new status asks for: app.core.hooks) only when it was one of the allowed
# ones: an event never lies about a status.
_TRANSITION = (
    keys.LUA_KEYS
    + hooks.LUA_HOOK
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
local n = tonumber(ARGV[4])
for i = 5, n + 4 do
  if current == ARGV[i] then
    redis.call('HSET', KEYS[1], unpack(ARGV, n + 5))
    if ARGV[2] ~= '' then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'event', 'status', 'data', ARGV[2])
      if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], 2592000) end
    end
    local status = redis.call('HGET', KEYS[1], 'status')
    if status ~= current then hook(ARGV[1], status) end
    return current
  end
end
return current
"""
)
MAX_EVENTS = 20_000  # per job: progress (<= ~10/s) for JOB_TIMEOUT's default 600 s, statuses and previews fit


# KEYS: job hash, its events[, a cache key]. ARGV: the job id, ttl, max events, status event JSON, the cache entry (or
# ""), the result's objects as JSON [[name, size, reservation], ...], then field/value pairs. Only a queued or running
# job takes the result, and only when every object is stored (live, or pending under the reservation its upload was
# made under: app.core.objects.put; -1 when one is being swept, unknown, or another's: store it again): the objects
# published for as long as the job lives, the fields, the cache entry, the event, the TTLs and the job's `completed`
# webhook delivery (app.core.hooks) at once.
_DELIVER = (
    keys.LUA_KEYS
    + hooks.LUA_HOOK
    + objects.LUA_OBJECTS
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if current ~= 'queued' and current ~= 'running' then return 0 end
local results = cjson.decode(ARGV[6])
for _, r in ipairs(results) do
  if not object_stored(r[1], r[3]) then return -1 end
end
local expires_at = redis_now() + tonumber(ARGV[2])
for _, r in ipairs(results) do object_publish(r[1], r[2], expires_at, r[3]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
if #KEYS == 3 then redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[2]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'event', 'status', 'data', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
hook(ARGV[1], 'succeeded')
return 1
"""
)
DELIVERED, ENDED, UNSTORED = 1, 0, -1


def deliver(
    redis,
    job_id: str,
    ttl: int,
    fields: dict[str, str],
    results: dict[str, int],
    cache: tuple[str, str] | None = None,
    gens: dict[str, str] | None = None,
) -> int:
    """Give a waiting job its stored `results` (object name -> size: app.core.objects) and mark it succeeded,
    atomically: DELIVERED; ENDED if the job had ended (e.g. canceled); UNSTORED if an object is being swept, unknown,
    or pending under another reservation than its `gens` entry (app.core.objects.put's): store it again, then
    deliver.

    `cache` = (key, value) is written in the same step, before the job's clients can see it succeed:
    a client that repeats its request at once is answered from the cache.
    """
    flat: list[Any] = []
    for k, v in {**fields, "status": JobStatus.SUCCEEDED.value}.items():
        flat += [k, v]
    event = json.dumps({"status": JobStatus.SUCCEEDED.value})
    job_keys = [keys.job(job_id), keys.events(job_id), *([cache[0]] if cache else [])]
    value = cache[1] if cache else ""
    stored = json.dumps([[name, size, (gens or {}).get(name, "")] for name, size in results.items()])
    return int(redis.eval(_DELIVER, len(job_keys), *job_keys, job_id, ttl, MAX_EVENTS, event, value, stored, *flat))


def new_job_id() -> str:
    return uuid.uuid4().hex


def new_record(
    spec: Spec, model: dict, owner: str = "", now: float | None = None, notes: dict | None = None
) -> dict[str, str]:
    """The hash fields of a freshly queued job (app.core.spec); `notes`: how its prompt was read (Spec.params). The
    submit script adds the job's run."""
    return {
        "id": spec.job_id,
        "kind": spec.KIND,
        "status": JobStatus.QUEUED.value,
        "params": json.dumps(spec.params(notes)),
        "model": json.dumps(model),
        "owner": owner,
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
    status = fields.get("status")
    event = json.dumps({"status": status.value if isinstance(status, JobStatus) else status}) if status else ""
    old = redis.eval(
        _TRANSITION,
        2,
        keys.job(job_id),
        keys.events(job_id),
        job_id,
        event,
        MAX_EVENTS,
        len(allowed),
        *(s.value for s in allowed),
        *flat,
    )
    return old.decode() if isinstance(old, bytes) else old


def expire(redis, job_id: str, ttl: int) -> None:
    """A finished job, its events and its results live `ttl` more seconds (RESULT_TTL), then are 404."""
    for key in (keys.job(job_id), keys.events(job_id)):
        redis.expire(key, ttl)


def owned_record(redis, job_id: str, owner: str) -> dict[str, str] | None:
    """The job's record when `job_id` is well formed (else Redis is not asked), the job exists and `owner` owns it;
    None otherwise, so that another key's job looks like an unknown one."""
    record = read_record(redis, job_id) if keys.valid_job_id(job_id) else None
    if record is None or not hmac.compare_digest(record.get("owner", ""), owner):
        return None
    return record


def read_record(redis, job_id: str) -> dict[str, str] | None:
    raw = redis.hgetall(keys.job(job_id))
    if not raw:
        return None
    return {k.decode(): v.decode() for k, v in raw.items()}
