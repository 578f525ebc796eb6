"""Live workers: each heartbeat keeps its worker's key (TTL 2 x HEARTBEAT_S) and its entry in one sorted set,
scored by the key's expiry. Readiness and metrics read the set by score, in O(log n + live workers): never a
SCAN, whatever else Redis holds.
"""

from __future__ import annotations

import json
import time

from app.core import keys

RQ_NAME_PREFIX = "diffusetv-"  # RQ's name of a worker (worker.main), which RQ records on the jobs it takes: + its id


def rq_name(worker_id: str) -> str:
    return RQ_NAME_PREFIX + worker_id


def id_of_rq_name(name: str) -> str | None:
    """The worker id in RQ's name of one of our workers; None for another name."""
    return name.removeprefix(RQ_NAME_PREFIX) if name.startswith(RQ_NAME_PREFIX) else None


def register(pipe, worker_id: str, info: dict, ttl: int, now: float | None = None) -> None:
    """One heartbeat (on a pipeline): the worker's key, its expiry in the set, and the pruning of expired entries."""
    now = time.time() if now is None else now
    pipe.set(keys.worker(worker_id), json.dumps(info), ex=ttl)
    pipe.zadd(keys.WORKERS, {worker_id: now + ttl})
    pipe.zremrangebyscore(keys.WORKERS, "-inf", now)


def unregister(redis, worker_id: str) -> None:
    pipe = redis.pipeline(transaction=True)
    pipe.delete(keys.worker(worker_id))
    pipe.zrem(keys.WORKERS, worker_id)
    pipe.execute()


def live(redis, now: float | None = None) -> list[dict]:
    """The heartbeats of the workers whose key has not expired."""
    now = time.time() if now is None else now
    ids = [i.decode() for i in redis.zrangebyscore(keys.WORKERS, now, "+inf")]
    values = redis.mget([keys.worker(i) for i in ids]) if ids else []
    return [json.loads(v) for v in values if v]
