"""The registry of stored objects: which exist, how large, and until when a live job uses them. It lives in Redis.

A result store (app.core.results) only holds bytes by name. The names are content addresses (`name`), so a cache hit,
a joined run or a second identical input points at the object that exists instead of copying it. What the submit and
deliver scripts must check and change atomically is kept here, beside the jobs:

- `diffusetv:object:<name>` (keys.object_entry): its state and size. `pending` from before its upload until a script
  publishes it; `live` once a job uses it; `deleting` while a sweeper removes it, with a lease (`until`) and a token;
- `diffusetv:objects` (keys.OBJECTS): its expiry, the latest of the jobs that use it (a score only ever raised:
  ZADD GT). A job record lives RESULT_TTL, and every script that gives a job an object raises the object's score to
  the job's own expiry, so no live job points at an object whose score has passed.

An object is registered before it is uploaded (`reserve`, scored `hold_s` ahead), so a process killed between the two
leaves an entry that the sweeper finds and deletes. The sweeper (`sweep`, run by the reaper) claims an object whose
score has passed in one script (state `deleting`), deletes it from the store, then forgets it. A script that sees
`deleting` treats the object as missing: the submit script runs the job afresh, and `reserve` waits for the delete to
end before the new upload, so a sweep never removes an object that a new job uses.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from app.core import hooks, keys
from app.core.results import ResultStore, StoreUnavailable

log = logging.getLogger("diffusetv.objects")

PNG, LATENT, INPUT = "png", "latent", "input"
_SUFFIX = {PNG: ".png", LATENT: ".safetensors", INPUT: ""}
DIGEST_RE = re.compile(r"[0-9a-f]{64}")
# How long a sweeper's claim lasts. It must outlast one delete in the slowest store: S3's is bounded by botocore's
# attempts x (connect + read timeouts), 3 x (3 + 10) s by default. A claim that lapses may be taken over.
DELETE_LEASE_S = 120
MAX_BACKOFF_S = 5.0

# Lua: the registry for the submit and deliver scripts. `expires_at` is on Redis's clock (hooks.LUA_NOW).
LUA_OBJECTS = (
    "local object_suffix = {"
    + ", ".join(f"{kind} = '{suffix}'" for kind, suffix in _SUFFIX.items())
    + "}\n"
    + f"""
local function object_name(kind, digest) return kind .. '/' .. digest .. object_suffix[kind] end
local function object_state(name) return redis.call('HGET', object_key(name), 'state') end
local function object_size(name) return tonumber(redis.call('HGET', object_key(name), 'size') or '0') end
local function object_keep(name, expires_at)
  if redis.call('EXISTS', object_key(name)) == 1 then redis.call('ZADD', '{keys.OBJECTS}', 'GT', expires_at, name) end
end
-- stored and not being deleted: live, or pending under the reservation `gen` its writer got (any, without one)
local function object_stored(name, gen)
  local h = redis.call('HMGET', object_key(name), 'state', 'gen')
  return h[1] == 'live' or (h[1] == 'pending' and (not gen or gen == '' or gen == h[2]))
end
local function object_publish(name, size, expires_at, gen)
  if not object_stored(name, gen) then return false end
  redis.call('HSET', object_key(name), 'state', 'live', 'size', size)
  redis.call('ZADD', '{keys.OBJECTS}', 'GT', expires_at, name)
  return true
end
"""
)
_PRELUDE = keys.LUA_KEYS + hooks.LUA_NOW + LUA_OBJECTS

# ARGV: name, hold_s, gen. False while a sweeper holds it, even past its lease (the sweeper's next pass finishes the
# delete: a delete still under way must not land on a new upload). Else scored hold_s ahead, and its reservation:
# a new entry is pending under `gen`; a pending or live one keeps its own (identical bytes: one upload serves all).
_RESERVE = (
    _PRELUDE
    + f"""
local now, k = redis_now(), object_key(ARGV[1])
local h = redis.call('HMGET', k, 'state', 'gen')
if h[1] == 'deleting' then return false end
redis.call('ZADD', '{keys.OBJECTS}', 'GT', now + tonumber(ARGV[2]), ARGV[1])
if h[1] == 'live' or h[1] == 'pending' then return h[2] or '' end
redis.call('HSET', k, 'state', 'pending', 'gen', ARGV[3])
redis.call('HDEL', k, 'until', 'token')
return ARGV[3]
"""
)

# ARGV: name, size, ttl, gen. 1 when the object is live now, scored ttl ahead; 0 if it is being deleted, unknown, or
# pending under another reservation than `gen` ('' for any).
_PUBLISH = _PRELUDE + "return object_publish(ARGV[1], ARGV[2], redis_now() + tonumber(ARGV[3]), ARGV[4]) and 1 or 0\n"

# ARGV: name, ttl.
_KEEP = _PRELUDE + "object_keep(ARGV[1], redis_now() + tonumber(ARGV[2]))\nreturn 1\n"

# ARGV: name, lease_s, token. 1 when this sweeper now holds the object (its score has passed, and no other sweeper's
# lease runs: a lapsed claim is taken over, and its delete done again).
_CLAIM = (
    _PRELUDE
    + f"""
local now, k = redis_now(), object_key(ARGV[1])
local score = redis.call('ZSCORE', '{keys.OBJECTS}', ARGV[1])
if not score or tonumber(score) > now then return 0 end
local h = redis.call('HMGET', k, 'state', 'until')
if h[1] == 'deleting' and tonumber(h[2] or '0') > now then return 0 end
redis.call('HSET', k, 'state', 'deleting', 'until', now + tonumber(ARGV[2]), 'token', ARGV[3])
return 1
"""
)

# ARGV: name, token. The object is deleted: forget it, unless its claim lapsed and someone else took it meanwhile.
_FORGET = (
    _PRELUDE
    + f"""
local k = object_key(ARGV[1])
if redis.call('HGET', k, 'token') ~= ARGV[2] then return 0 end
redis.call('DEL', k)
redis.call('ZREM', '{keys.OBJECTS}', ARGV[1])
return 1
"""
)


# ARGV: name, token. A claim given back: its lease ends now (the object stays `deleting`).
_RELEASE = (
    _PRELUDE
    + """
local k = object_key(ARGV[1])
if redis.call('HGET', k, 'token') == ARGV[2] then redis.call('HSET', k, 'until', 0) end
return 1
"""
)
MAX_FAILS = 3  # deletes that fail in a row before a sweep pass ends


def name(kind: str, digest: str) -> str:
    """An object's name from its kind and its digest (sha256 hex): `png/<d>.png`, `latent/<d>.safetensors`,
    `input/<d>`."""
    if kind not in _SUFFIX or not DIGEST_RE.fullmatch(digest):
        raise ValueError(f"no object name for kind {kind!r} and digest {digest!r}")
    return f"{kind}/{digest}{_SUFFIX[kind]}"


def reserve(redis, name: str, hold_s: float, gen: str = "") -> str | None:
    """Register `name` before its upload, not swept for `hold_s` seconds: its reservation (a new entry is pending
    under `gen`, or a fresh one; a pending or live entry keeps its own). None while a sweeper deletes it: upload only
    once that has ended."""
    got = redis.eval(_RESERVE, 0, name, hold_s, gen or uuid.uuid4().hex)
    return got.decode() if isinstance(got, bytes) else got


def put(redis, store: ResultStore, name: str, data: bytes, hold_s: float, window_s: float, sleep=time.sleep) -> str:
    """Reserve and upload `data` as `name`, then reserve again: the reservation the upload is under (a sweep that took
    the object while it uploaded makes a new one, and the upload is done again). Tries again with backoff (a delete
    under way, a store that does not answer) for `window_s` seconds; then StoreUnavailable("result store
    unavailable: ..."). Returns the reservation, for the script that publishes the object (app.core.jobs.deliver)."""
    deadline, delay, uploaded = time.monotonic() + window_s, 0.1, None
    while True:
        try:
            got = reserve(redis, name, hold_s)  # a new entry gets a new reservation each time
            if got is not None and got == uploaded:
                return got  # still the reservation the upload was made under
            if got is not None:
                store.put(name, data)
                uploaded = got
                continue
            detail = f"{name} is being deleted"
        except StoreUnavailable as exc:
            detail = str(exc)
        left = deadline - time.monotonic()
        if left <= 0:
            raise StoreUnavailable(f"result store unavailable: {detail}")
        log.warning("storing %s: %s; trying again", name, detail)
        sleep(min(delay, left))
        delay = min(delay * 2, MAX_BACKOFF_S)


def publish(redis, name: str, size: int, ttl: int, gen: str = "") -> bool:
    """Mark a reserved, uploaded object live and keep it `ttl` seconds more; False if it is being deleted, unknown, or
    pending under another reservation than `gen` (put's; '' for any)."""
    return bool(redis.eval(_PUBLISH, 0, name, size, ttl, gen))


def keep(redis, name: str, ttl: int) -> None:
    """A known object is kept at least `ttl` seconds more (its expiry is only ever raised)."""
    redis.eval(_KEEP, 0, name, ttl)


def state(redis, name: str) -> str | None:
    """pending, live, deleting, or None for an object the registry does not know."""
    value = redis.hget(keys.object_entry(name), "state")
    return value.decode() if value is not None else None


def size(redis, name: str) -> int | None:
    value = redis.hget(keys.object_entry(name), "size")
    return int(value) if value is not None else None


def claim(redis, name: str, lease_s: float = DELETE_LEASE_S) -> str | None:
    """Take an expired object for deletion (state `deleting`): the claim's token, or None when it is not due, or
    another sweeper holds it."""
    token = uuid.uuid4().hex
    return token if redis.eval(_CLAIM, 0, name, lease_s, token) else None


def forget(redis, name: str, token: str) -> bool:
    """Drop a deleted object's entry, if the claim `token` still holds it."""
    return bool(redis.eval(_FORGET, 0, name, token))


def due(redis, limit: int) -> list[str]:
    """Up to `limit` objects whose expiry has passed, oldest first (Redis's clock)."""
    seconds, micros = redis.time()
    now = seconds + micros / 1e6
    return [v.decode() for v in redis.zrangebyscore(keys.OBJECTS, "-inf", now, start=0, num=limit)]


def sweep(redis, store: ResultStore, limit: int) -> int:
    """One bounded pass: claim, delete and forget up to `limit` expired objects; returns how many went. A delete that
    fails gives its claim back at once (the object stays `deleting`, a miss, until the next pass deletes it); MAX_FAILS
    in a row end the pass."""
    deleted, failed = 0, 0
    for object_name in due(redis, limit):
        token = claim(redis, object_name)
        if token is None:
            continue
        try:
            store.delete(object_name)
        except StoreUnavailable as exc:
            log.warning("could not delete %s: %s", object_name, exc)
            release(redis, object_name, token)
            failed += 1
            if failed >= MAX_FAILS:
                break
            continue
        failed = 0
        deleted += forget(redis, object_name, token)
    if deleted:
        redis.hincrby(keys.METRICS, "objects_swept", deleted)
    return deleted


def release(redis, name: str, token: str) -> None:
    """Give back a claim whose delete failed (the call has returned: nothing of it lands later), so that the next
    pass takes the object again at once."""
    redis.eval(_RELEASE, 0, name, token)
