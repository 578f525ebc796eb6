"""The atomic submit: one Lua script admits a job, or refuses it and writes nothing.

Admission checks every bound first (the client's quota of jobs, bytes and model work, the run's followers,
the model's queue length) and only then writes: the job record, its event stream, its run, the run's open-run entry, the
RQ job and its queue entry appear together or not at all, each with a TTL from the moment it exists. Redis
runs a script alone, and refuses its first write (and so the whole script) when it is out of memory.

A job is answered one of three ways, tried in order:
- `cached`: the engine key's result exists; the job is a new, already succeeded job with a copy of the PNG (and
  of an interpolation's strip, an inversion's latent);
- `follow`: a run of the same engine key is queued or running; the job joins it (at most MAX_FOLLOWERS do);
- `lead`: a new run, queued on the model's RQ queue (at most MAX_QUEUE runs wait there). Only a new run is
  charged the model work it will take (the compute quota); cache hits and joins take none.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from app.core import keys
from app.core.events import preview_steps
from app.core.jobs import MAX_EVENTS
from app.core.settings import Settings

# A job's hash (MEMORY USAGE: 1.0 to 1.5 kB), its event stream, whose first entry takes a whole stream node
# (4.8 kB), and the allocator's share of its PNG (about 0.4 kB): `python -m bench.job_bytes` measures them.
RECORD_BYTES = 7168
PROGRESS_EVENT_BYTES = 128  # one progress entry of a job's stream (about 70 bytes of fields, plus the entry)
PNG_OVERHEAD_BYTES = 1024  # PNG chunks and the tEXt parameters

ADMITTED = frozenset({"cached", "follow", "lead"})
UNBOUNDED = 2**53  # a quota with no bound (Lua numbers are doubles: exact up to 2^53)

_LUA = (
    keys.LUA_KEYS
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
local function over(cost, compute)
  if used_jobs + 1 > q.jobs then return {{'quota', 'jobs', retry_after()}} end
  if used_bytes + cost > q.bytes then return {{'quota', 'bytes', retry_after()}} end
  if compute > 0 and used_compute + compute > q.compute then return {{'quota', 'compute', retry_after()}} end
  return nil
end
local function charge(cost, compute)
  redis.call('HINCRBY', q.key, 'jobs', 1)
  redis.call('HINCRBY', q.key, 'bytes', cost)
  if compute > 0 then redis.call('HINCRBY', q.key, 'compute', compute) end
  if redis.call('TTL', q.key) < 0 then redis.call('EXPIRE', q.key, q.expire) end
end
local function write_inputs(ttl)  -- ARGV[2 .. 1 + #spec.inputs]: the blobs of spec.inputs' digests
  for i, digest in ipairs(spec.inputs) do
    local key = input_key(digest)
    if not redis.call('SET', key, ARGV[1 + i], 'NX', 'EX', ttl) and redis.call('TTL', key) < ttl then
      redis.call('EXPIRE', key, ttl)
    end
  end
end
local function write_job(fields, status_events, ttl)
  local jk, ek = job_key(spec.job), events_key(spec.job)
  for k, v in pairs(fields) do redis.call('HSET', jk, k, v) end
  for _, data in ipairs(status_events) do
    redis.call('XADD', ek, 'MAXLEN', '~', spec.max_events, '*', 'event', 'status', 'data', data)
  end
  redis.call('EXPIRE', jk, ttl)
  redis.call('EXPIRE', ek, ttl)
end

-- 1. a cached result: a copy of its PNG (and an interpolation's strip), already succeeded; no model work
if spec.cache_key ~= '' then
  local raw = redis.call('GET', cache_key(spec.cache_key))
  if raw then
    local entry = cjson.decode(raw)
    local size = redis.call('STRLEN', png_key(entry.job))
    if size > 0 then
      local strip = redis.call('STRLEN', strip_key(entry.job))
      local latent = redis.call('STRLEN', latent_key(entry.job))
      local cost = size + strip + latent + spec.record_bytes
      local refused = over(cost, 0)
      if refused then return refused end
      charge(cost, 0)
      redis.call('COPY', png_key(entry.job), png_key(spec.job), 'REPLACE')
      redis.call('EXPIRE', png_key(spec.job), spec.result_ttl)
      local source = redis.call(
        'HMGET', job_key(entry.job), 'engine', 'batch_size', 'progress', 'strip_sha256', 'latent_sha256')
      local fields = spec.record
      if strip > 0 then
        redis.call('COPY', strip_key(entry.job), strip_key(spec.job), 'REPLACE')
        redis.call('EXPIRE', strip_key(spec.job), spec.result_ttl)
        fields.strip_sha256 = source[4] or ''
      end
      if latent > 0 then
        redis.call('COPY', latent_key(entry.job), latent_key(spec.job), 'REPLACE')
        redis.call('EXPIRE', latent_key(spec.job), spec.result_ttl)
        fields.latent_sha256 = source[5] or ''
      end
      fields.status, fields.started_at, fields.finished_at = 'succeeded', spec.now, spec.now
      fields.cached, fields.sha256 = '1', entry.sha256
      fields.engine, fields.batch_size, fields.progress = source[1] or '', source[2] or '', source[3] or ''
      write_job(fields, {{spec.events.succeeded}}, spec.result_ttl)
      redis.call('HINCRBY', '{keys.METRICS}', 'cache_hits', 1)
      return {{'cached', entry.job, 'succeeded'}}
    end
  end
end

-- 2. an identical run, queued or running: join it, up to max_followers jobs besides its leader
if spec.engine_key ~= '' then
  local rid = redis.call('GET', open_key(spec.engine_key))
  if rid then
    local status = redis.call('HGET', run_key(rid), 'status')
    if status == 'queued' or status == 'running' then
      if redis.call('SCARD', jobs_key(rid)) > spec.max_followers then return {{'followers', rid, status}} end
      local refused = over(spec.cost + spec.input_bytes, 0)
      if refused then return refused end
      charge(spec.cost + spec.input_bytes, 0)
      write_inputs(spec.ttl)
      local fields = spec.record
      fields.run = rid
      local statuses = {{spec.events.queued}}
      if status == 'running' then
        fields.status, fields.started_at = 'running', spec.now
        statuses[2] = spec.events.running
      end
      write_job(fields, statuses, spec.ttl)
      redis.call('SADD', jobs_key(rid), spec.job)
      redis.call('HINCRBY', '{keys.METRICS}', 'joined', 1)
      return {{'follow', rid, status}}
    end
  end
end

-- 3. a new run on the model's queue: only a new run charges the model work it will take
if redis.call('LLEN', spec.queue) >= spec.max_queue then return {{'queue_full', '', ''}} end
local refused = over(spec.cost + spec.input_bytes, spec.compute)
if refused then return refused end
charge(spec.cost + spec.input_bytes, spec.compute)
write_inputs(spec.ttl)
local fields = spec.record
fields.run = spec.job
write_job(fields, {{spec.events.queued}}, spec.ttl)
if spec.engine_key ~= '' then
  redis.call('HSET', run_key(spec.job), 'status', 'queued', 'engine_key', spec.engine_key)
  redis.call('SADD', jobs_key(spec.job), spec.job)
  redis.call('SET', open_key(spec.engine_key), spec.job, 'EX', spec.ttl)
  redis.call('EXPIRE', run_key(spec.job), spec.ttl)
  redis.call('EXPIRE', jobs_key(spec.job), spec.ttl)
end
local i = 2 + #spec.inputs
while i <= #ARGV do  -- the RQ job and its queue entry, as RQ itself writes them
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return {{'lead', spec.job, 'queued'}}
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
    inputs: dict[str, bytes] = dataclasses.field(default_factory=dict)  # digest -> blob (app.inputs)


@dataclass(frozen=True)
class Bounds:
    """What the script checks before it writes, and the TTLs of what it writes."""

    quota: Quota
    ttl: int  # of a waiting job and its run (Settings.pending_ttl of its timeout)
    result_ttl: int  # of a result, and of a job answered from the cache
    max_queue: int
    max_followers: int

    @classmethod
    def of(cls, settings: Settings, client: str, now: float, timeout: int) -> Bounds:
        """The service's bounds for one client's submission at `now` of a job whose runs may take `timeout` seconds
        (app.core.timeouts)."""
        s = settings
        quota = quota_for(client, s.client_jobs, s.client_bytes, s.quota_window_s, now, s.client_compute)
        return cls(quota, s.pending_ttl(timeout), s.result_ttl, s.max_queue, s.max_followers)


@dataclass(frozen=True)
class Admission:
    """What the script did: `cached`, `follow` or `lead` (admitted), else `quota`, `followers` or `queue_full`."""

    outcome: str
    detail: str = ""  # the run's id (follow, lead), the cached job's id, or which quota ran out
    status: str = ""  # the run's status (follow), or the quota's seconds until it resets (quota)

    @property
    def admitted(self) -> bool:
        return self.outcome in ADMITTED


def result_cost(image_size: int, channels: int, steps: int, previews: bool, images: int = 1) -> int:
    """Upper estimate of the bytes one job keeps in Redis until it expires: its record and statuses, one
    progress event per step, its PNG (raw pixels bound it: PNG's deflate never grows them by more than a few
    bytes per block) and, with previews, up to 11 base64 PNG previews (app.core.events.preview_steps)."""
    png = image_size * image_size * channels + PNG_OVERHEAD_BYTES
    shown = len(preview_steps(steps)) if previews else 0
    return RECORD_BYTES + steps * PROGRESS_EVENT_BYTES + images * png + shown * (png * 4 // 3)


def admit(redis, entry: Entry, bounds: Bounds, rq_commands: Sequence[Sequence[Any]], now: float) -> Admission:
    """Run the submit script for `entry` within `bounds`; `rq_commands` write its RQ job and queue entry."""
    spec = {
        "job": entry.job_id,
        "record": entry.record,
        "engine_key": entry.engine_key,
        "cache_key": entry.cache_key,
        "queue": entry.queue_key,
        "quota": dataclasses.asdict(bounds.quota),
        "cost": entry.cost,
        "compute": entry.compute,
        "inputs": list(entry.inputs),
        "input_bytes": sum(len(blob) for blob in entry.inputs.values()),
        "record_bytes": RECORD_BYTES,
        "ttl": bounds.ttl,
        "result_ttl": bounds.result_ttl,
        "max_queue": bounds.max_queue,
        "max_followers": bounds.max_followers,
        "max_events": MAX_EVENTS,
        "now": repr(now),
        "events": {s: json.dumps({"status": s}) for s in ("queued", "running", "succeeded")},
    }
    flat: list[Any] = []
    for command in rq_commands:
        flat += [len(command), *(c.value if isinstance(c, Enum) else c for c in command)]
    blobs = list(entry.inputs.values())
    outcome, detail, status = (_decode(v) for v in redis.eval(_LUA, 0, json.dumps(spec), *blobs, *flat))
    return Admission(outcome, detail, status)


def _decode(value) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)
