"""Model runs: the unit of model work, shared by every job that asks for the same bytes.

A run is identified by its engine key (DESIGN.md: model digest, seed, steps, eta, device type,
precision). Jobs subscribe to runs: identical concurrent requests share one run, and a finished
run's PNG is the result cache. A run stops early only when no job waits for it any more.
"""

from __future__ import annotations

import hashlib
import json

from app.core import keys

PENDING_ENGINE = "pending"  # no worker has claimed the model yet: the engine is not known


def engine_key(digest: str, seed: int, steps: int, eta: float, engine: str) -> str:
    """sha256 of the canonical engine key; `engine` is `device/precision`."""
    device, _, precision = engine.partition("/")
    key = {"digest": digest, "seed": seed, "steps": steps, "eta": eta, "device": device, "precision": precision}
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# KEYS: run hash, run's job set. ARGV: job id. Join a queued or running run, or lead a new one.
_SUBSCRIBE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'running' then
  redis.call('SADD', KEYS[2], ARGV[1])
  return {'follow', redis.call('HGET', KEYS[1], 'leader'), status}
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'leader', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
return {'lead', ARGV[1], 'queued'}
"""


def subscribe(redis, run_key: str, job_id: str) -> tuple[str, str, str]:
    """('lead' | 'follow', leader job id, run status). Atomic against the worker closing the run."""
    role, leader, status = redis.eval(_SUBSCRIBE, 2, keys.run(run_key), keys.run_jobs(run_key), job_id)
    return tuple(v.decode() if isinstance(v, bytes) else v for v in (role, leader, status))


def set_status(redis, run_key: str, status: str) -> None:
    redis.hset(keys.run(run_key), "status", status)


def mark_running(redis, run_key: str, worker_id: str, rq_job_id: str) -> None:
    """A worker starts computing the run: the reaper re-queues it if that worker's heartbeat stops."""
    pipe = redis.pipeline(transaction=True)
    pipe.hset(keys.run(run_key), mapping={"status": "running", "worker": worker_id, "rq_job": rq_job_id})
    pipe.sadd(keys.RUNNING, run_key)
    pipe.execute()


def close(redis, run_key: str, status: str | None = None) -> None:
    """The run is over: forget it (or keep it marked `status`, e.g. canceled), and stop watching it."""
    pipe = redis.pipeline(transaction=True)
    if status:
        pipe.hset(keys.run(run_key), "status", status)
    else:
        pipe.delete(keys.run(run_key), keys.run_jobs(run_key))
    pipe.srem(keys.RUNNING, run_key)
    pipe.execute()


def job_ids(redis, run_key: str) -> list[str]:
    return sorted(v.decode() for v in redis.smembers(keys.run_jobs(run_key)))


def cached(redis, cache_key: str) -> dict | None:
    """The cache entry {job, sha256} of a finished run, if its PNG still exists."""
    raw = redis.get(keys.cache(cache_key))
    if raw is None:
        return None
    entry = json.loads(raw)
    return entry if redis.exists(keys.png(entry["job"])) else None
