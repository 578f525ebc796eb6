"""Webhook deliveries enqueued with the status change that causes them, in the same Lua script (docs/API.md, Webhooks).

A job that asked for webhooks carries `webhook`, `webhook_events` and `webhook_ttl` in its record (Submission). Every
script that changes a job's status (the submit script's cache hit and join, app.core.jobs' transition and deliver,
app.core.runs' cancel) ends with `hook(id, status)`. When the job subscribed to the event, that writes a delivery:
a hash (keys.delivery) with the job record as it is at that moment, due now on DELIVERIES_DUE and listed under the
job. Nothing is sent from a script: the notifier (`diffusetv notifier`) takes due deliveries and sends them, so no
worker or request ever waits for a receiver.

Progress is latest-wins: one slot per job (`progress_<job id>`), overwritten by each report, due at most every
PROGRESS_EVERY_S after the last one sent, and never retried.
"""

from __future__ import annotations

from app.core import keys

EVENTS = ("start", "progress", "completed")  # what a request may subscribe to (webhook_events)
DEFAULT_EVENTS = ("completed",)
TYPES = {"start": "job.started", "progress": "job.progress", "completed": "job.completed"}  # the envelope's `type`
PROGRESS_EVERY_S = 0.5  # at most one progress delivery per job per this many seconds (as Cog)
PROGRESS_PREFIX = "progress_"  # a job's progress slot: keys.delivery(PROGRESS_PREFIX + job id)


def progress_slot(job_id: str) -> str:
    return PROGRESS_PREFIX + job_id


def backoff_cap(settings, retry: int) -> float:
    """The longest wait before retry `retry` (counted from 1: retry k waits up to WEBHOOK_BASE_DELAY_S x 2^(k-1),
    capped at WEBHOOK_MAX_DELAY_S)."""
    return min(settings.webhook_max_delay_s, settings.webhook_base_delay_s * 2 ** (retry - 1))


def backoff_window_s(settings) -> float:
    """The longest time all of a delivery's backoff waits may take together (every wait at its cap)."""
    return sum(backoff_cap(settings, k) for k in range(1, settings.webhook_attempts))


def retry_window_s(settings) -> float:
    """The longest time from a delivery's first attempt to its last: every backoff wait at its cap, every attempt at
    its deadline. Only the submit's first TTL: the notifier extends it at each claim and retry (app.core.deliveries)
    with its own settings."""
    return backoff_window_s(settings) + settings.webhook_attempts * settings.webhook_timeout_s


def delivery_ttl(settings) -> int:
    """How long a delivery and its attempts are kept: RESULT_TTL past the end of its retries."""
    return int(settings.result_ttl + retry_window_s(settings)) + 1


# Lua: Redis's clock (TIME) in seconds, the one clock every due time is read against.
LUA_NOW = """
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# Lua: `hook(id, status)` after a status change has been written; `progress_hook(id)` after a progress report. Both do
# nothing for a job without a webhook or that did not subscribe to the event. The time is Redis's (TIME), the one
# clock every due time is read against.
LUA_HOOK = (
    f"""
local DUE, PENDING = '{keys.DELIVERIES_DUE}', '{keys.DELIVERIES_PENDING}'
local PROGRESS_EVERY, PROGRESS_PREFIX = {PROGRESS_EVERY_S}, '{PROGRESS_PREFIX}'
local TYPES = {{start = '{TYPES["start"]}', progress = '{TYPES["progress"]}', completed = '{TYPES["completed"]}'}}
"""
    + LUA_NOW
    + """
local function subscribed(id, event)
  local h = redis.call('HMGET', job_key(id), 'webhook', 'webhook_events', 'webhook_ttl')
  if not h[1] or h[1] == '' then return nil end
  if not string.find(',' .. (h[2] or '') .. ',', ',' .. event .. ',', 1, true) then return nil end
  return h
end
local function snapshot(id)
  local flat, record = redis.call('HGETALL', job_key(id)), {}
  for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
  return cjson.encode(record)
end
local function message_id(id)
  return 'msg_' .. id .. '_' .. redis.call('HINCRBY', job_key(id), 'webhook_seq', 1)
end
local function hook(id, status)
  local event
  if status == 'running' then event = 'start'
  elseif status == 'succeeded' or status == 'failed' or status == 'canceled' then event = 'completed'
  else return end
  local h = subscribed(id, event)
  if event == 'completed' and redis.call('ZREM', DUE, PROGRESS_PREFIX .. id) == 1 then  -- never sent now
    redis.call('HSET', delivery_key(PROGRESS_PREFIX .. id), 'state', 'dropped')
  end
  if not h then return end
  local now, ttl = redis_now(), tonumber(h[3] or '86400') or 86400
  local did = message_id(id)
  local dk = delivery_key(did)
  redis.call('HSET', dk, 'id', did, 'job', id, 'url', h[1], 'type', TYPES[event], 'owner',
    redis.call('HGET', job_key(id), 'owner') or '', 'timestamp', string.format('%.6f', now),
    'record', snapshot(id), 'state', 'pending', 'next_at', string.format('%.6f', now))
  redis.call('EXPIRE', dk, ttl)
  redis.call('ZADD', DUE, now, did)
  redis.call('ZADD', PENDING, now, did)
  redis.call('RPUSH', job_deliveries_key(id), did)
  redis.call('EXPIRE', job_deliveries_key(id), ttl)
end
local function progress_hook(id)
  if redis.call('HGET', job_key(id), 'status') ~= 'running' then return end  -- never after job.completed
  local h = subscribed(id, 'progress')
  if not h then return end
  local now, ttl = redis_now(), tonumber(h[3] or '86400') or 86400
  local slot = PROGRESS_PREFIX .. id
  local dk = delivery_key(slot)
  local sent = tonumber(redis.call('HGET', dk, 'sent_at') or '0') or 0
  local fresh = redis.call('EXISTS', dk) == 0
  redis.call('HSET', dk, 'id', message_id(id), 'job', id, 'url', h[1], 'type', TYPES.progress, 'owner',
    redis.call('HGET', job_key(id), 'owner') or '', 'timestamp', string.format('%.6f', now),
    'record', snapshot(id), 'state', 'pending')
  redis.call('EXPIRE', dk, ttl)
  redis.call('ZADD', DUE, 'NX', math.max(now, sent + PROGRESS_EVERY), slot)
  if fresh then
    redis.call('RPUSH', job_deliveries_key(id), slot)
    redis.call('EXPIRE', job_deliveries_key(id), ttl)
  end
end
"""
)

# One progress report (the worker's, app.core.events.PROGRESS): the job's progress slot, when it subscribed.
_PROGRESS = keys.LUA_KEYS + LUA_HOOK + "progress_hook(ARGV[1])\n"


def progress(pipe, job_id: str) -> None:
    """Queue a job's progress delivery on a pipeline (latest-wins, throttled; nothing without a subscription)."""
    pipe.eval(_PROGRESS, 0, job_id)
