"""Webhook deliveries on their way out: the notifier's claim and finish scripts, and the body every attempt sends.

A delivery (app.core.hooks writes it) is due on DELIVERIES_DUE. `claim` takes due ones atomically: a regular delivery
stays on DUE with its due time moved a lease ahead and a claim token in its hash, so that a notifier that dies loses
nothing (another takes it once the lease has run out); a progress slot leaves DUE (it is never retried). `finish`
records the attempt and the delivery's next state, only while the claim token is still the one written, so that a
notifier that outlived its lease cannot overwrite the one that took over.

The body is rendered once, at the first claim, from the job record snapshotted when the delivery was enqueued, and
kept in the delivery's hash: every attempt, by any notifier, sends the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from app.core import keys
from app.core.hooks import LUA_NOW, PROGRESS_PREFIX
from app.views import iso, job_view

DELIVERED, FAILED, RETRY, GONE, RELEASE = "delivered", "failed", "retry", "gone", "release"
DROPPED = "dropped"  # a progress report not sent (its host was busy, or its job ended first)
GONE_TTL_S = 30 * 86_400  # a 410 Gone is remembered this long for its owner and URL
PROGRESS_ATTEMPTS_KEPT = 20  # a progress slot keeps its latest attempts only (one per report sent)

_LUA_HEAD = (
    keys.LUA_KEYS
    + keys._lua_function("delivery_attempts_key", keys.delivery_attempts)
    + f"""
local DUE, PENDING, METRICS = '{keys.DELIVERIES_DUE}', '{keys.DELIVERIES_PENDING}', '{keys.METRICS}'
local PROGRESS_PREFIX = '{PROGRESS_PREFIX}'
"""
    + LUA_NOW
    + """
local function stamp(t) return string.format('%.6f', t) end
-- keep a delivery and its attempts at least `keep` seconds from now (a TTL is never shortened)
local function keep_for(dk, attempts, keep)
  local ttl = redis.call('TTL', dk)
  if ttl >= 0 and ttl < keep then
    redis.call('EXPIRE', dk, keep)
    ttl = keep
  end
  if ttl > 0 and redis.call('EXISTS', attempts) == 1 then redis.call('EXPIRE', attempts, ttl) end
end
"""
)

# ARGV: the most deliveries to take, the lease (s), the claimant's name, how long a delivery is kept past its lease
# (RESULT_TTL: its hash never expires under a claim or before its record has been read). Returns {claims, seconds
# until the next due delivery or ''}; a claim is {delivery id, token, its hash as a flat list}. A regular delivery's
# token is the claimant's name and the delivery's claim count; a progress slot's is the message id it holds now.
_CLAIM = (
    _LUA_HEAD
    + """
local now = redis_now()
local limit, lease, claimant, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local claims = {}
for _, did in ipairs(redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'LIMIT', 0, limit)) do
  local dk = delivery_key(did)
  if redis.call('EXISTS', dk) == 0 then  -- expired before it was sent: counted, and nothing left to send
    redis.call('ZREM', DUE, did)
    redis.call('ZREM', PENDING, did)
    redis.call('HINCRBY', METRICS, 'webhook_expired', 1)
  elseif string.sub(did, 1, #PROGRESS_PREFIX) == PROGRESS_PREFIX then
    redis.call('ZREM', DUE, did)
    redis.call('HSET', dk, 'sent_at', stamp(now))
    claims[#claims + 1] = {did, redis.call('HGET', dk, 'id'), redis.call('HGETALL', dk)}
  else
    local token = claimant .. '/' .. redis.call('HINCRBY', dk, 'claims', 1)
    redis.call('HSET', dk, 'claim', token)
    redis.call('ZADD', DUE, now + lease, did)
    keep_for(dk, delivery_attempts_key(did), math.ceil(lease + keep))
    claims[#claims + 1] = {did, token, redis.call('HGETALL', dk)}
  end
end
local first = redis.call('ZRANGE', DUE, 0, 0, 'WITHSCORES')
return {claims, first[2] and stamp(math.max(0, tonumber(first[2]) - now)) or ''}
"""
)

# KEYS: the delivery's hash, its attempts, its gone key. ARGV: the delivery's id, the claim token, the outcome, the
# attempt's time, its status code (''), its error (''), the delay before a retry (s), the gone key's TTL, how many
# attempts a progress slot keeps, how long a delivery is kept past its next attempt (RESULT_TTL). Returns 1, or 0 when
# the claim is no longer this one (nothing written).
_FINISH = (
    _LUA_HEAD
    + """
local dk, attempts = KEYS[1], KEYS[2]
local did, token, outcome = ARGV[1], ARGV[2], ARGV[3]
local progress = string.sub(did, 1, #PROGRESS_PREFIX) == PROGRESS_PREFIX
if progress then
  if redis.call('EXISTS', dk) == 0 then return 0 end
elseif redis.call('HGET', dk, 'claim') ~= token then
  return 0
end
local now = redis_now()
if outcome == 'release' then  -- not attempted (its host was busy): due again after the delay
  redis.call('ZADD', DUE, now + tonumber(ARGV[7]), did)
  redis.call('HDEL', dk, 'claim')
  return 1
end
if outcome == 'dropped' then  -- a progress report not sent: no attempt, and no longer pending
  if progress and redis.call('HGET', dk, 'id') == token then redis.call('HSET', dk, 'state', 'dropped') end
  return 1
end
local attempt = {at = tonumber(ARGV[4]), status_code = cjson.null, error = cjson.null, next_at = cjson.null}
if ARGV[5] ~= '' then attempt.status_code = tonumber(ARGV[5]) end
if ARGV[6] ~= '' then attempt.error = ARGV[6] end
if outcome == 'retry' then attempt.next_at = now + tonumber(ARGV[7]) end
redis.call('RPUSH', attempts, cjson.encode(attempt))
local ttl = redis.call('TTL', dk)
if ttl > 0 then redis.call('EXPIRE', attempts, ttl) end
redis.call('HINCRBY', dk, 'attempts', 1)
redis.call('HINCRBY', METRICS, 'webhook_attempts', 1)
if progress then  -- sent once; its state is the report's it sent, unless a newer report has replaced it
  redis.call('LTRIM', attempts, -tonumber(ARGV[9]), -1)
  local sent = outcome == 'delivered'
  if redis.call('HGET', dk, 'id') == token then redis.call('HSET', dk, 'state', sent and 'delivered' or 'failed') end
  if outcome == 'gone' then redis.call('SET', KEYS[3], '1', 'EX', ARGV[8]) end
  redis.call('HINCRBY', METRICS, sent and 'webhook_progress_sent' or 'webhook_progress_failed', 1)
  return 1
end
redis.call('HDEL', dk, 'claim')
if outcome == 'retry' then  -- kept past its next attempt, whatever TTL the API gave it
  redis.call('ZADD', DUE, attempt.next_at, did)
  redis.call('HSET', dk, 'next_at', stamp(attempt.next_at))
  keep_for(dk, attempts, math.ceil(tonumber(ARGV[7]) + tonumber(ARGV[10])))
  return 1
end
redis.call('ZREM', DUE, did)
redis.call('ZREM', PENDING, did)
redis.call('HDEL', dk, 'next_at')
redis.call('HSET', dk, 'state', outcome == 'delivered' and 'delivered' or 'failed')
if outcome == 'gone' then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[8])
end
redis.call('HINCRBY', METRICS, 'webhook_' .. outcome, 1)
return 1
"""
)


# KEYS: the delivery's hash. ARGV: its rendered body. Stores it unless one is there (the first claim's wins), only in
# a hash that still exists (never a new hash with no TTL); returns the stored body, or nil when the hash has expired.
_KEEP_BODY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSETNX', KEYS[1], 'body', ARGV[1])
return redis.call('HGET', KEYS[1], 'body')
"""


@dataclass(frozen=True)
class Claim:
    """One delivery a notifier has taken: its id (a progress slot's is `progress_<job>`), the claim token that
    `finish` must show, and its hash as it was when taken."""

    id: str
    token: str
    fields: dict[str, str]

    @property
    def message_id(self) -> str:
        """The webhook-id: stable across a delivery's retries; a progress slot's changes with each report."""
        return self.fields["id"]

    @property
    def progress(self) -> bool:
        return self.id.startswith(PROGRESS_PREFIX)

    @property
    def attempts(self) -> int:
        """Attempts made before this one."""
        return int(self.fields.get("attempts") or 0)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def lease_s(settings, host_wait_s: float) -> float:
    """A claim's lease: generous, so that a live notifier always records its attempt within it (else another notifier
    sends the delivery again). It covers the wait for a host slot, two attempt deadlines (one for the attempt, one for
    the resolver's and Redis's threads being slow) and WEBHOOK_LEASE_MARGIN_S (30 s) for the rest."""
    return host_wait_s + 2 * settings.webhook_timeout_s + settings.webhook_lease_margin_s


def claim(redis, limit: int, lease_s: float, claimant: str, keep_s: float = 0.0) -> tuple[list[Claim], float | None]:
    """Up to `limit` due deliveries, taken for `lease_s` seconds (each kept in Redis `keep_s` past its lease at
    least); and the seconds until the next one is due (None: none is waiting)."""
    taken, next_in = redis.eval(_CLAIM, 0, limit, lease_s, claimant, keep_s)
    claims = []
    for did, token, flat in taken:
        fields = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
        claims.append(Claim(_text(did), _text(token), fields))
    return claims, float(next_in) if next_in else None


def render(fields: dict[str, str]) -> bytes:
    """The Standard Webhooks envelope of a delivery: its type, the time it was enqueued (ISO 8601) and the job as
    GET /jobs/{id} gave it at that moment; compact JSON."""
    record = json.loads(fields["record"])
    envelope = {
        "type": fields["type"],
        "timestamp": iso(fields["timestamp"]),
        "data": job_view(record).model_dump(mode="json"),
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


def body(redis, claim: Claim) -> bytes:
    """The bytes every attempt of this delivery sends: rendered by the first claim and kept in its hash (a progress
    slot, sent once per report, is rendered each time)."""
    if claim.progress:
        return render(claim.fields)
    if "body" in claim.fields:
        return claim.fields["body"].encode()
    rendered = render(claim.fields)
    stored = redis.eval(_KEEP_BODY, 1, keys.delivery(claim.id), rendered)
    return stored if stored is not None else rendered


@dataclass(frozen=True)
class Attempt:
    """One attempt as it is recorded: when it was made, and the receiver's status code or an error in general words."""

    at: float
    status_code: int | None = None
    error: str | None = None


def finish(redis, claim: Claim, outcome: str, attempt: Attempt, delay_s: float = 0.0, keep_s: float = 0.0) -> bool:
    """Record one attempt (its time, its status code or error) and what follows: DELIVERED, FAILED or GONE (final),
    RETRY after `delay_s` (the delivery then kept `keep_s` past it at least), RELEASE (not attempted: due again after
    `delay_s`, no attempt recorded) or DROPPED (a progress report not sent). False when the claim had passed to
    another notifier (nothing written)."""
    gone = gone_key(claim.fields.get("owner", ""), claim.fields.get("url", ""))
    written = redis.eval(
        _FINISH,
        3,
        keys.delivery(claim.id),
        keys.delivery_attempts(claim.id),
        gone,
        claim.id,
        claim.token,
        outcome,
        repr(attempt.at),
        "" if attempt.status_code is None else attempt.status_code,
        attempt.error or "",
        delay_s,
        GONE_TTL_S,
        PROGRESS_ATTEMPTS_KEPT,
        keep_s,
    )
    return bool(written)


def url_digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def gone_key(owner: str, url: str) -> str:
    """The key that remembers a 410 Gone from `url` for `owner` (checked at submit and before each attempt)."""
    return keys.webhook_gone(owner, url_digest(url))


def is_gone(redis, owner: str, url: str) -> bool:
    return bool(redis.exists(gone_key(owner, url)))


def pending(redis) -> tuple[int, float | None]:
    """Undelivered deliveries (retries waiting included), and the enqueue time of the oldest (Redis clock)."""
    pipe = redis.pipeline(transaction=False)
    pipe.zcard(keys.DELIVERIES_PENDING)
    pipe.zrange(keys.DELIVERIES_PENDING, 0, 0, withscores=True)
    count, first = pipe.execute()
    return int(count), (float(first[0][1]) if first else None)
