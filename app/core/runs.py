"""Model runs: the unit of model work, shared by every job that asks for the same bytes.

A run computes one sample. Its id is the id of the job that led it, and it serves every job that
asked for the same engine key (DESIGN.md: the model's identity, what the request fixes, the engine)
while it was open: identical concurrent requests share one run. A finished run's PNG is the result
cache. A run stops early only when no job waits for it any more.

All run state changes are Lua scripts, so that joining (the submit script, app.core.submit), canceling,
finishing and failing a run never interleave: a job either joins a run before it closes (and gets its
result) or starts a new one.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING

from app.core import hooks, keys
from app.core.jobs import MAX_EVENTS, JobStatus, expire, transition

if TYPE_CHECKING:
    from app.core.spec import Spec

WAITING = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
PENDING_ENGINE = "pending"  # no worker has claimed the model yet: the engine is not known


def engine_key(spec: Spec, engine: str) -> str:
    """sha256 of the canonical engine key: the spec's fields that fix the bytes (app.core.spec.Spec.key_fields: the
    model's identity and ref, the seed, steps and eta, a text model's normalised prompt and guidance) and the
    engine, `device/precision/kernels/encoder` (worker.engine.Engine.id); workers whose kernels or PNG encoder differ
    give other bytes, so their results never mix."""
    device, precision, kernels, encoder = [*engine.split("/", 3), "", "", ""][:4]
    key = {**spec.key_fields(), "device": device, "precision": precision, "kernels": kernels}
    if encoder:  # every worker's engine names its encoder; a key without one is the join key before any reports
        key["encoder"] = encoder
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# Lua helpers shared by the scripts: the key names come from app.core.keys, the one place that builds them.
_LUA_KEYS = (
    keys.LUA_KEYS
    + """
local function active(id)
  local s = redis.call('HGET', job_key(id), 'status')
  return s == 'queued' or s == 'running'
end
local function close(rid, status)
  redis.call('HSET', run_key(rid), 'status', status)
  local ek = redis.call('HGET', run_key(rid), 'engine_key')
  if ek and redis.call('GET', open_key(ek)) == rid then redis.call('DEL', open_key(ek)) end
  redis.call('SREM', '{running}', rid)
end
""".replace("{running}", keys.RUNNING)
)

# ARGV: run id, final run status. Close the run (nobody can join it now); returns its jobs.
_CLOSE = (
    _LUA_KEYS
    + """
close(ARGV[1], ARGV[2])
return redis.call('SMEMBERS', jobs_key(ARGV[1]))
"""
)

# ARGV: job id, finished_at, max events, ttl. Cancel the job (with its `completed` webhook delivery: app.core.hooks);
# withdraw its run when nobody else waits. Returns {old status or false, 1 if the run was withdrawn (its RQ job may
# leave the queue) else 0}.
_CANCEL = (
    _LUA_KEYS
    + hooks.LUA_HOOK
    + """
local jk = job_key(ARGV[1])
local current = redis.call('HGET', jk, 'status')
if current ~= 'queued' and current ~= 'running' then return {current, 0} end
redis.call('HSET', jk, 'status', 'canceled', 'finished_at', ARGV[2])
local ek = events_key(ARGV[1])
redis.call('XADD', ek, 'MAXLEN', '~', ARGV[3], '*', 'event', 'status', 'data', '{"status": "canceled"}')
redis.call('EXPIRE', jk, ARGV[4])
redis.call('EXPIRE', ek, ARGV[4])
hook(ARGV[1], 'canceled')
local rid = redis.call('HGET', jk, 'run')
if not rid or rid == '' then return {current, 1} end
for _, other in ipairs(redis.call('SMEMBERS', jobs_key(rid))) do
  if other ~= ARGV[1] and active(other) then return {current, 0} end
end
close(rid, 'canceled')
redis.call('EXPIRE', run_key(rid), ARGV[4])
redis.call('EXPIRE', jobs_key(rid), ARGV[4])
return {current, 1}
"""
)


def _decode(value):
    return value.decode() if isinstance(value, bytes) else value


def close(redis, run_id: str, status: str) -> list[str]:
    """Close a run (`done`, `canceled`, `failed`): no job can join it any more. Returns the ids of its jobs."""
    return sorted(_decode(v) for v in redis.eval(_CLOSE, 0, run_id, status))


def forget(redis, run_id: str) -> None:
    """Drop a closed run's keys once its jobs have their outcome."""
    redis.delete(keys.run(run_id), keys.run_jobs(run_id))


def cancel_job(redis, job_id: str, finished_at: str, ttl: int) -> tuple[str | None, bool]:
    """(old status, whether the job's run was withdrawn because nobody else waits for it)."""
    old, withdrawn = redis.eval(_CANCEL, 0, job_id, finished_at, MAX_EVENTS, ttl)
    return _decode(old), bool(withdrawn)


# ARGV: run id, worker id, RQ job id, ttl, members... Mark the run running, and give it and every job waiting for
# it a fresh TTL (app.core.settings.Settings.pending_ttl): a run that starts has the whole of its time ahead.
_TAKE_RUN = """
local rid, ttl = ARGV[1], ARGV[4]
redis.call('HSET', run_key(rid), 'status', 'running', 'worker', ARGV[2], 'rq_job', ARGV[3])
if #ARGV > 4 then redis.call('SADD', jobs_key(rid), unpack(ARGV, 5)) end
redis.call('SADD', '{running}', rid)
redis.call('EXPIRE', run_key(rid), ttl)
redis.call('EXPIRE', jobs_key(rid), ttl)
for _, id in ipairs(redis.call('SMEMBERS', jobs_key(rid))) do
  if redis.call('EXISTS', job_key(id)) == 1 then
    redis.call('EXPIRE', job_key(id), ttl)
    redis.call('EXPIRE', events_key(id), ttl)
  end
end
local ek = redis.call('HGET', run_key(rid), 'engine_key')
if ek and redis.call('GET', open_key(ek)) == rid then redis.call('EXPIRE', open_key(ek), ttl) end
""".replace("{running}", keys.RUNNING)
_TAKE = _LUA_KEYS + _TAKE_RUN
# KEYS[1]: the run's RQ queue; ARGV as _TAKE's. Taken, and no copy of its RQ job left in the queue (the reaper may have
# put one back while RQ handed it to this worker slowly: app.reaper.rescue_stranded)
_TAKE_LEADER = _LUA_KEYS + "redis.call('LREM', KEYS[1], 0, ARGV[3])\n" + _TAKE_RUN
# KEYS[1]: the run's RQ queue; ARGV as _TAKE's. Off the queue and taken in one step, or neither (another worker had it)
_CLAIM = _LUA_KEYS + "if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end\n" + _TAKE_RUN + "return 1\n"


def mark_running(
    redis,
    run_id: str,
    worker_id: str,
    rq_job_id: str,
    members: list[str] | None = None,
    ttl: int = 86_400,
    queue_key: str | None = None,
) -> None:
    """A worker has taken the run: the reaper re-queues it if that worker's heartbeat stops. The run, its open-run
    entry and its jobs live `ttl` more seconds from now. `queue_key`: the RQ queue that handed it the run, which keeps
    no copy of it (in the same step)."""
    args = (run_id, worker_id, rq_job_id, ttl, *(members or []))
    if queue_key is None:
        redis.eval(_TAKE, 0, *args)
    else:
        redis.eval(_TAKE_LEADER, 1, queue_key, *args)


def claim(redis, queue_key: str, run_id: str, worker_id: str, ttl: int = 86_400) -> bool:
    """Take a queued run off its RQ queue list and mark it running (`mark_running`), in one step: whenever its worker
    dies, the run is either still queued or watched by the reaper, never in neither. False (and nothing written) when
    the queue no longer holds it: another worker took it. Its RQ job id is the run's id."""
    return bool(redis.eval(_CLAIM, 1, queue_key, run_id, worker_id, run_id, ttl, run_id))


def fail_jobs(redis, job_ids: list[str], error: str, ttl: int) -> None:
    """Fail the jobs still queued or running, with a clear error; the others keep their outcome."""
    for job_id in job_ids:
        fields = {"status": JobStatus.FAILED, "finished_at": repr(time.time()), "error": error}
        if transition(redis, job_id, (JobStatus.QUEUED, JobStatus.RUNNING), fields) in WAITING:
            expire(redis, job_id, ttl)
            redis.hincrby(keys.METRICS, "jobs_failed", 1)


def fail_run(redis, run_id: str, error: str, ttl: int) -> None:
    """Close a run as failed and fail every job still waiting for it."""
    fail_jobs(redis, close(redis, run_id, "failed") or [run_id], error, ttl)
    forget(redis, run_id)


def abandon(redis, run_id: str) -> None:
    """Hand a run whose outcome its worker could not write (Redis full, or away) to the reaper, as if that worker had
    died: the run loses its `worker` field, a deletion that even a full Redis takes, and the reaper re-queues or
    fails it once Redis takes writes again (app.reaper)."""
    redis.hdel(keys.run(run_id), "worker")


def job_ids(redis, run_id: str) -> list[str]:
    return sorted(_decode(v) for v in redis.smembers(keys.run_jobs(run_id)))
