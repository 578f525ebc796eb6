"""Every Redis key DiffuseTV uses, built from one prefix in one place (as rq's `rq:job:` + id)."""

from __future__ import annotations

import re

PREFIX = "diffusetv:"
JOB_ID_RE = re.compile(r"[0-9a-f]{32}")


def job(job_id: str) -> str:
    """Hash: the job record (status, params, model, progress, timestamps, result metadata)."""
    return f"{PREFIX}job:{job_id}"


def object_entry(name: str) -> str:
    """Hash: one stored object's entry in the registry (app.core.objects): its state (pending, live, deleting), size,
    and while it is being deleted the sweeper's lease (until, token). Its expiry is its score in OBJECTS."""
    return f"{PREFIX}object:{name}"


def blob(name: str) -> str:
    """String: an object's bytes in a `redis` result store (app.core.results.redis_store)."""
    return f"{PREFIX}blob:{name}"


OBJECTS = f"{PREFIX}objects"  # sorted set: object name -> when no live job uses it any more (epoch s, Redis TIME)


def events(job_id: str) -> str:
    """Stream: the job's events (status, progress, preview), replayable from the start while the job exists."""
    return f"{PREFIX}events:{job_id}"


def queue_name(model_ref: str) -> str:
    """The RQ queue of one model version (`name@version`); RQ stores it under `rq:queue:<name>`."""
    return f"{PREFIX}generate:{model_ref}"


def worker(worker_id: str) -> str:
    """String with TTL 2 x HEARTBEAT_S: a live worker's JSON heartbeat (models, engines, pid)."""
    return f"{PREFIX}worker:{worker_id}"


WORKERS = f"{PREFIX}workers"  # sorted set: worker id -> its heartbeat's expiry (epoch s); read by /readyz in O(log n)


def engine(model_ref: str) -> str:
    """String with TTL 2 x HEARTBEAT_S: the engine (`device/precision/kernels/encoder`) that serves a model version."""
    return f"{PREFIX}engine:{model_ref}"


def run(run_id: str) -> str:
    """Hash: a model run (status, engine key, worker, RQ job), by the id of the job that led it."""
    return f"{PREFIX}run:{run_id}"


def run_jobs(run_id: str) -> str:
    """Set: the ids of the jobs waiting for a run."""
    return f"{PREFIX}run:{run_id}:jobs"


def open_run(engine_key: str) -> str:
    """String: the id of the open (queued or running) run for an engine key, which identical requests join."""
    return f"{PREFIX}open:{engine_key}"


def cache(cache_key: str) -> str:
    """String with TTL RESULT_TTL: JSON {job, sha256} of the job whose PNG holds this engine key's result."""
    return f"{PREFIX}cache:{cache_key}"


def quota(client: str, window: int) -> str:
    """Hash with TTL QUOTA_WINDOW_S: a client's jobs and bytes in one quota window (`window` = epoch // length)."""
    return f"{PREFIX}quota:{client}:{window}"


def leases(client: str) -> str:
    """Sorted set: a client's open event streams and long polls (lease id -> expiry), capped per client."""
    return f"{PREFIX}leases:{client}"


def delivery(delivery_id: str) -> str:
    """Hash: one webhook delivery (app.core.hooks): its job, URL, type, the job record snapshotted when it was
    enqueued, its rendered body once first sent, its state. A job's progress has one slot, `progress_<job id>`."""
    return f"{PREFIX}delivery:{delivery_id}"


def delivery_attempts(delivery_id: str) -> str:
    """List: a delivery's attempts, oldest first, one JSON object each (time, status code or error, next try)."""
    return f"{PREFIX}delivery:{delivery_id}:attempts"


def job_deliveries(job_id: str) -> str:
    """List: the ids of a job's deliveries, in the order they were enqueued (GET /jobs/{id}/deliveries)."""
    return f"{PREFIX}job:{job_id}:deliveries"


def webhook_gone(owner: str, url_digest: str) -> str:
    """String with TTL: a receiver answered 410 Gone for this owner and URL (its sha256): nothing more goes there."""
    return f"{PREFIX}gone:{owner}:{url_digest}"


def idempotency(scope: str, key_digest: str) -> str:
    """String with TTL IDEMPOTENCY_WINDOW_S: JSON {fingerprint, jobs} of the submission an Idempotency-Key made, per
    client scope (app.clients.client_id) and the key's sha256."""
    return f"{PREFIX}idem:{scope}:{key_digest}"


DELIVERIES_DUE = f"{PREFIX}deliveries:due"  # sorted set: delivery id -> when a notifier may take it (epoch s)
DELIVERIES_PENDING = f"{PREFIX}deliveries:pending"  # sorted set: undelivered id -> when it was enqueued (epoch s)
RUNNING = f"{PREFIX}running"  # set of the run ids a worker has taken (the reaper watches them)
REAPER_LOCK = f"{PREFIX}reaper"  # string with TTL: the one API instance that reaps dead workers' runs
METRICS = f"{PREFIX}metrics"  # hash of worker and API counters


def valid_job_id(job_id: str) -> bool:
    return JOB_ID_RE.fullmatch(job_id) is not None


def _lua_function(name: str, key, argument: str = "id") -> str:
    """A Lua function that builds a key as `key` does: its text around the argument, from one call in Python."""
    before, after = key("\0").split("\0")
    tail = f" .. '{after}'" if after else ""
    return f"local function {name}({argument}) return '{before}' .. {argument}{tail} end\n"


# The same keys for the Lua scripts (app.core.submit, app.core.runs): one table, built from the functions above.
LUA_KEYS = "".join(
    _lua_function(name, key, argument)
    for name, key, argument in (
        ("job_key", job, "id"),
        ("events_key", events, "id"),
        ("object_key", object_entry, "name"),
        ("run_key", run, "id"),
        ("jobs_key", run_jobs, "id"),
        ("open_key", open_run, "ek"),
        ("cache_key", cache, "ek"),
        ("delivery_key", delivery, "id"),
        ("job_deliveries_key", job_deliveries, "id"),
    )
)
