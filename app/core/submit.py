"""The atomic submit: one Lua script admits a submission's jobs, all of them, or refuses it and writes nothing.

Admission plans every job of the submission first (the client's quota of jobs, bytes and model work, summed over
them; the run's followers; the model's queue length, growing with each new run) and only then writes: the job
records, their event streams, their runs, the runs' open-run entries, the RQ jobs and their queue entries appear
together or not at all, each with a TTL from the moment it exists. Redis runs a script alone, and refuses its first
write (and so the whole script) when it is out of memory. A job's inputs were stored before the script
(app.queueing): it publishes them with the job, or refuses the submission (`inputs`) if a sweep took one meanwhile.

A job is answered one of three ways, tried in order:
- `cached`: the engine key's result exists; the job is a new, already succeeded job that points at the same stored
  objects (its PNG, an interpolation's strip, an inversion's latent: app.core.objects), whose expiry it extends to
  its own; a result whose objects are not all live (expired, or being swept) is a miss;
- `follow`: a run of the same engine key is queued or running, or an earlier job of the same submission leads one;
  the job joins it (at most MAX_FOLLOWERS do);
- `lead`: a new run, queued on the model's RQ queue (at most MAX_QUEUE runs wait there). Only a new run is
  charged the model work it will take (the compute quota); cache hits and joins take none.

With an Idempotency-Key (app.core.idempotency), the script first reads the key's record: the same request again is
answered with the jobs it made while every one of them exists (`replay`: nothing charged or written; once one has
expired, they all start anew), another request is refused (`mismatch`, even when the jobs have expired), and an
admission writes the record. The routes read the record first (`replayed`), so that a retry gets its jobs before the
request's other checks; the script still decides every other case atomically. A job that ends or starts here (a
cache hit, a join of a running run) enqueues its webhook delivery in the same script (app.core.hooks).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from app.core import hooks, keys, objects
from app.core.events import preview_steps
from app.core.jobs import MAX_EVENTS
from app.core.settings import Settings
from app.core.submission import Idempotency

# A job's hash (MEMORY USAGE: about 1.5 kB), its event stream, whose first entry takes a whole stream node (4.8 kB),
# and the allocator's share of a PNG: `python -m bench.job_bytes` measures them (RQ's own job hash, 6.7 kB, is not
# counted: docs/RELIABILITY.md).
RECORD_BYTES = 7168
PROGRESS_EVENT_BYTES = 128  # one progress entry of a job's stream (about 70 bytes of fields, plus the entry)
PNG_OVERHEAD_BYTES = 1024  # PNG chunks and the tEXt parameters

ADMITTED = frozenset({"cached", "follow", "lead"})
UNBOUNDED = 2**53  # a quota with no bound (Lua numbers are doubles: exact up to 2^53)

_LUA = (
    keys.LUA_KEYS
    + hooks.LUA_HOOK
    + objects.LUA_OBJECTS
    + f"""
local spec = cjson.decode(ARGV[1])
local q = spec.quota
local used = redis.call('HMGET', q.key, 'jobs', 'bytes', 'compute')
local used_jobs, used_bytes = tonumber(used[1] or '0'), tonumber(used[2] or '0')
local used_compute = tonumber(used[3] or '0')
local function retry_after()
  local ttl = redis.call('TTL', q.key)
  if ttl < 1 then return q.expire end
  return ttl
end
-- one more job taking `cost` bytes and `compute` image-steps, after what the entries before it planned
local function over(cost, compute)
  if used_jobs + 1 > q.jobs then return {{'quota', 'jobs', retry_after()}} end
  if used_bytes + cost > q.bytes then return {{'quota', 'bytes', retry_after()}} end
  if compute > 0 and used_compute + compute > q.compute then return {{'quota', 'compute', retry_after()}} end
  used_jobs, used_bytes, used_compute = used_jobs + 1, used_bytes + cost, used_compute + compute
  return nil
end
local function charge(cost, compute)
  redis.call('HINCRBY', q.key, 'jobs', 1)
  redis.call('HINCRBY', q.key, 'bytes', cost)
  if compute > 0 then redis.call('HINCRBY', q.key, 'compute', compute) end
  if redis.call('TTL', q.key) < 0 then redis.call('EXPIRE', q.key, q.expire) end
end
local function write_inputs(e, ttl)  -- the inputs the API stored (app.core.objects): live as long as the job
  local expires_at = redis_now() + ttl
  for digest, size in pairs(e.inputs) do object_publish(object_name('input', digest), size, expires_at) end
end
local function inputs_gone(e)  -- an input that a sweeper took since the API stored it: refuse, nothing written
  for digest, _ in pairs(e.inputs) do
    local state = object_state(object_name('input', digest))
    if state ~= 'pending' and state ~= 'live' then return {{'inputs', digest, ''}} end
  end
  return nil
end
-- a finished job's objects (its PNG, an interpolation's strip, an inversion's latent) when every one is live:
-- (names, their bytes); nil when one is not (never stored, expired, or being deleted: a miss)
local function results_of(record)
  local names = {{object_name('png', record[1])}}
  if record[2] and record[2] ~= '' then names[#names + 1] = object_name('png', record[2]) end
  if record[3] and record[3] ~= '' then names[#names + 1] = object_name('latent', record[3]) end
  local size = 0
  for _, name in ipairs(names) do
    if object_state(name) ~= 'live' then return nil end
    size = size + object_size(name)
  end
  return names, size
end
local function write_job(id, fields, status_events, ttl)
  local jk, ek = job_key(id), events_key(id)
  for k, v in pairs(fields) do redis.call('HSET', jk, k, v) end
  for _, data in ipairs(status_events) do
    redis.call('XADD', ek, 'MAXLEN', '~', spec.max_events, '*', 'event', 'status', 'data', data)
  end
  redis.call('EXPIRE', jk, ttl)
  redis.call('EXPIRE', ek, ttl)
end

-- 0. an Idempotency-Key already used: the same request gets its jobs again (no charge, no new job), another is refused
local idem = spec.idempotency
if idem then
  local raw = redis.call('GET', idem.key)
  if raw then
    local held = cjson.decode(raw)
    if held.fingerprint ~= idem.fingerprint then return {{'mismatch', '', ''}} end
    local replay = {{'replay', '', ''}}
    for _, id in ipairs(held.jobs) do
      if redis.call('EXISTS', job_key(id)) == 0 then replay = nil break end  -- one expired: they all start anew
      replay[#replay + 1] = id
    end
    if replay then return replay end
  end
end

-- Plan every entry, in order, before anything is written: a refusal of any refuses them all.
local planned_runs = {{}}  -- engine key -> the run an entry of this submission leads
local members = {{}}  -- run id -> its jobs, with the ones this submission adds
local queued = {{}}  -- queue -> the runs this submission adds to it
local function plan(e)
  -- 1. a cached result: the same objects as its job's (PNG, an interpolation's strip, an inversion's latent), kept
  -- as long as this job; already succeeded; no model work. The stored bytes are charged.
  if e.cache_key ~= '' then
    local raw = redis.call('GET', cache_key(e.cache_key))
    if raw then
      local entry = cjson.decode(raw)
      local from = redis.call('HMGET', job_key(entry.job), 'sha256', 'strip_sha256', 'latent_sha256', 'engine',
        'batch_size', 'progress')
      local names, size = nil, 0
      if from[1] == entry.sha256 then names, size = results_of(from) end
      if names then
        local cost = size + spec.record_bytes
        local refused = over(cost, 0)
        if refused then return refused end
        return {{'cached', entry.job, 'succeeded', cost = cost, entry = entry, from = from, names = names}}
      end
    end
  end
  local gone = inputs_gone(e)  -- a job that runs needs its inputs
  if gone then return gone end
  -- 2. an identical run, queued or running (or led by an entry before this one): join it, up to max_followers jobs
  -- besides its leader
  if e.engine_key ~= '' then
    local rid, status = planned_runs[e.engine_key], 'queued'
    if not rid then
      rid = redis.call('GET', open_key(e.engine_key))
      if rid then status = redis.call('HGET', run_key(rid), 'status') end
    end
    if rid and (status == 'queued' or status == 'running') then
      members[rid] = members[rid] or redis.call('SCARD', jobs_key(rid))
      if members[rid] > spec.max_followers then return {{'followers', rid, status}} end
      local refused = over(e.cost + e.input_bytes, 0)
      if refused then return refused end
      members[rid] = members[rid] + 1
      return {{'follow', rid, status}}
    end
  end
  -- 3. a new run on the model's queue: only a new run charges the model work it will take
  if redis.call('LLEN', e.queue) + (queued[e.queue] or 0) >= spec.max_queue then return {{'queue_full', '', ''}} end
  local refused = over(e.cost + e.input_bytes, e.compute)
  if refused then return refused end
  queued[e.queue] = (queued[e.queue] or 0) + 1
  if e.engine_key ~= '' then
    planned_runs[e.engine_key] = e.job
    members[e.job] = 1
  end
  return {{'lead', e.job, 'queued'}}
end
local plans = {{}}
for i, e in ipairs(spec.entries) do
  plans[i] = plan(e)
  local outcome = plans[i][1]
  if outcome ~= 'cached' and outcome ~= 'follow' and outcome ~= 'lead' then return plans[i] end
end

-- Then write them all.
local function write_cached(e, p)
  local from = p.from
  charge(p.cost, 0)
  local expires_at = redis_now() + spec.result_ttl
  for _, name in ipairs(p.names) do object_keep(name, expires_at) end
  local fields = e.record
  if from[2] and from[2] ~= '' then fields.strip_sha256 = from[2] end
  if from[3] and from[3] ~= '' then fields.latent_sha256 = from[3] end
  fields.status, fields.started_at, fields.finished_at = 'succeeded', spec.now, spec.now
  fields.cached, fields.sha256 = '1', p.entry.sha256
  fields.engine, fields.batch_size, fields.progress = from[4] or '', from[5] or '', from[6] or ''
  write_job(e.job, fields, {{spec.events.succeeded}}, spec.result_ttl)
  hook(e.job, 'succeeded')
  redis.call('HINCRBY', '{keys.METRICS}', 'cache_hits', 1)
end
local function write_follower(e, p)
  local rid, status = p[2], p[3]
  charge(e.cost + e.input_bytes, 0)
  write_inputs(e, spec.ttl)
  local fields = e.record
  fields.run = rid
  local statuses = {{spec.events.queued}}
  if status == 'running' then
    fields.status, fields.started_at = 'running', spec.now
    statuses[2] = spec.events.running
  end
  write_job(e.job, fields, statuses, spec.ttl)
  redis.call('SADD', jobs_key(rid), e.job)
  if status == 'running' then hook(e.job, 'running') end
  redis.call('HINCRBY', '{keys.METRICS}', 'joined', 1)
end
local function write_leader(e)
  charge(e.cost + e.input_bytes, e.compute)
  write_inputs(e, spec.ttl)
  local fields = e.record
  fields.run = e.job
  write_job(e.job, fields, {{spec.events.queued}}, spec.ttl)
  if e.engine_key ~= '' then
    redis.call('HSET', run_key(e.job), 'status', 'queued', 'engine_key', e.engine_key)
    redis.call('SADD', jobs_key(e.job), e.job)
    redis.call('SET', open_key(e.engine_key), e.job, 'EX', spec.ttl)
    redis.call('EXPIRE', run_key(e.job), spec.ttl)
    redis.call('EXPIRE', jobs_key(e.job), spec.ttl)
  end
  local i = e.rq_from
  while i < e.rq_to do  -- the RQ job and its queue entry, as RQ itself writes them
    local n = tonumber(ARGV[i])
    redis.call(unpack(ARGV, i + 1, i + n))
    i = i + n + 1
  end
end
local admitted, ids = {{'admitted', '', ''}}, {{}}
for i, e in ipairs(spec.entries) do
  local p = plans[i]
  if p[1] == 'cached' then write_cached(e, p)
  elseif p[1] == 'follow' then write_follower(e, p)
  else write_leader(e) end
  ids[i] = e.job
  for k = 1, 3 do admitted[#admitted + 1] = p[k] end
end
if idem then
  redis.call('SET', idem.key, cjson.encode({{fingerprint = idem.fingerprint, jobs = ids}}), 'EX', idem.ttl)
end
return admitted
"""
)


@dataclass(frozen=True)
class Quota:
    """A client's allowance in the current window: `key` counts its jobs and bytes until it expires."""

    key: str
    jobs: int
    bytes: int
    expire: int
    compute: int = UNBOUNDED  # image-steps of model work (app.core.spec.Spec.compute)


def quota_for(client: str, jobs: int, max_bytes: int, window_s: int, now: float, compute: int = UNBOUNDED) -> Quota:
    """The fixed window holding `now`: its counter key expires when the window ends."""
    index = int(now // window_s)
    expire = max(1, int((index + 1) * window_s - now) + 1)
    return Quota(keys.quota(client, index), jobs, max_bytes, expire, compute)


@dataclass(frozen=True)
class Entry:
    """One job as the script writes it: its record, the bytes its results take, where it queues and which run
    it may share. `engine_key` '' means a job that shares no run; `cache_key` '' skips the cache (no engine has
    claimed the model yet, so no result can be known)."""

    job_id: str
    record: dict[str, str]
    cost: int
    queue_key: str
    engine_key: str = ""
    cache_key: str = ""
    compute: int = 0  # the image-steps of model work a new run takes (cache hits and joins take none)
    inputs: dict[str, int] = dataclasses.field(default_factory=dict)  # digest -> size, stored (app.core.objects)


@dataclass(frozen=True)
class Bounds:
    """What the script checks before it writes, and the TTLs of what it writes."""

    quota: Quota
    ttl: int  # of a waiting job and its run (Settings.pending_ttl of its timeout)
    result_ttl: int  # of a result, and of a job answered from the cache
    max_queue: int
    max_followers: int
    idempotency_ttl: int = 86400  # of an Idempotency-Key's record (Settings.idempotency_window_s)

    @classmethod
    def of(cls, settings: Settings, client: str, now: float, timeout: int) -> Bounds:
        """The service's bounds for one client's submission at `now` of jobs whose runs may take `timeout` seconds
        (app.core.timeouts)."""
        s = settings
        quota = quota_for(client, s.client_jobs, s.client_bytes, s.quota_window_s, now, s.client_compute)
        return cls(quota, s.pending_ttl(timeout), s.result_ttl, s.max_queue, s.max_followers, s.idempotency_window_s)


REFUSALS = frozenset({"quota", "followers", "queue_full", "mismatch", "inputs"})


@dataclass(frozen=True)
class Admission:
    """What the script did. Admitted: each entry's (outcome, detail, status) in `jobs`, `cached`, `follow` or `lead`
    (the first's also in `outcome`, `detail`, `status`), or `replay`: an Idempotency-Key's earlier submission,
    whose jobs are `job_ids`. Refused, nothing written: `quota`, `followers` or `queue_full` (for the whole
    submission, when any entry is), or `mismatch` (the key was used with another request)."""

    outcome: str
    detail: str = ""  # the run's id (follow, lead), the cached job's id, or which quota ran out
    status: str = ""  # the run's status (follow), or the quota's seconds until it resets (quota)
    jobs: tuple[tuple[str, str, str], ...] = ()
    job_ids: tuple[str, ...] = ()

    @property
    def admitted(self) -> bool:
        return self.outcome not in REFUSALS

    @property
    def replayed(self) -> bool:
        return self.outcome == "replay"


def result_cost(image_size: int, channels: int, steps: int, previews: bool, images: int = 1) -> int:
    """Upper estimate of the bytes one job keeps in Redis until it expires: its record and statuses, one
    progress event per step, its PNG (raw pixels bound it: PNG's deflate never grows them by more than a few
    bytes per block) and, with previews, up to 11 base64 PNG previews (app.core.events.preview_steps)."""
    png = image_size * image_size * channels + PNG_OVERHEAD_BYTES
    shown = len(preview_steps(steps)) if previews else 0
    return RECORD_BYTES + steps * PROGRESS_EVENT_BYTES + images * png + shown * (png * 4 // 3)


def admit(
    redis,
    entries: Sequence[Entry],
    bounds: Bounds,
    rq_commands: Sequence[Sequence[Sequence[Any]]],
    now: float,
    idempotency: Idempotency | None = None,
) -> Admission:
    """Run the submit script for `entries`, all or none, within `bounds`; `rq_commands[i]` write entry i's RQ job and
    queue entry (run only when it leads a new run). With `idempotency`, a key already used answers its earlier
    submission (`replay`) or `mismatch`, and an admission records the key."""
    if not entries or len(rq_commands) != len(entries):
        raise ValueError(f"{len(entries)} entries, {len(rq_commands)} lists of RQ commands: one list per entry")
    argv: list[Any] = []
    specs = []
    for entry, commands in zip(entries, rq_commands, strict=True):
        rq_from = 2 + len(argv)  # ARGV[1] is the spec
        for command in commands:
            argv += [len(command), *(c.value if isinstance(c, Enum) else c for c in command)]
        specs.append(_entry_spec(entry, rq_from, 2 + len(argv)))
    spec = {
        "entries": specs,
        "quota": dataclasses.asdict(bounds.quota),
        "record_bytes": RECORD_BYTES,
        "ttl": bounds.ttl,
        "result_ttl": bounds.result_ttl,
        "max_queue": bounds.max_queue,
        "max_followers": bounds.max_followers,
        "max_events": MAX_EVENTS,
        "now": repr(now),
        "events": {s: json.dumps({"status": s}) for s in ("queued", "running", "succeeded")},
    }
    if idempotency is not None:
        key = idempotency_key(idempotency)
        spec["idempotency"] = {"key": key, "fingerprint": idempotency.fingerprint, "ttl": bounds.idempotency_ttl}
    outcome, detail, status, *rest = (_decode(v) for v in redis.eval(_LUA, 0, json.dumps(spec), *argv))
    if outcome == "replay":
        return Admission(outcome, job_ids=tuple(rest))
    if outcome != "admitted":
        return Admission(outcome, detail, status)
    jobs = tuple(tuple(rest[i : i + 3]) for i in range(0, len(rest), 3))
    return Admission(*jobs[0], jobs=jobs, job_ids=tuple(e.job_id for e in entries))


def _entry_spec(entry: Entry, rq_from: int, rq_to: int) -> dict[str, Any]:
    """An entry as the script reads it: its RQ commands in ARGV[rq_from, rq_to)."""
    return {
        "job": entry.job_id,
        "record": entry.record,
        "engine_key": entry.engine_key,
        "cache_key": entry.cache_key,
        "queue": entry.queue_key,
        "cost": entry.cost,
        "compute": entry.compute,
        "inputs": entry.inputs,
        "input_bytes": sum(entry.inputs.values()),
        "rq_from": rq_from,
        "rq_to": rq_to,
    }


def _decode(value) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def idempotency_key(idempotency: Idempotency) -> str:
    """The Redis key of an Idempotency-Key's record."""
    return keys.idempotency(idempotency.scope, hashlib.sha256(idempotency.key.encode()).hexdigest())


def replayed(redis, idempotency: Idempotency | None) -> list[str] | None:
    """The jobs an Idempotency-Key admitted for this same request, while every one of them exists; None otherwise
    (no key, a key not used yet, another request's, or jobs expired). A read only: the script decides at admission."""
    if idempotency is None or (raw := redis.get(idempotency_key(idempotency))) is None:
        return None
    held = json.loads(raw)
    if held["fingerprint"] != idempotency.fingerprint:
        return None
    pipe = redis.pipeline(transaction=False)
    for job_id in held["jobs"]:
        pipe.exists(keys.job(job_id))
    return list(held["jobs"]) if all(pipe.execute()) else None
