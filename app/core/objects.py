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
local function object_publish(name, size, expires_at)
  local state = object_state(name)
  if state ~= 'pending' and state ~= 'live' then return false end
  redis.call('HSET', object_key(name), 'state', 'live', 'size', size)
  redis.call('ZADD', '{keys.OBJECTS}', 'GT', expires_at, name)
  return true
end
"""
)
_PRELUDE = keys.LUA_KEYS + hooks.LUA_NOW + LUA_OBJECTS

# ARGV: name, hold_s. 0 while a sweeper holds it; else pending (a live object stays live), scored hold_s ahead.
_RESERVE = (
    _PRELUDE
    + f"""
local now, k = redis_now(), object_key(ARGV[1])
local h = redis.call('HMGET', k, 'state', 'until')
if h[1] == 'deleting' and tonumber(h[2] or '0') > now then return 0 end
if h[1] ~= 'live' then
  redis.call('HSET', k, 'state', 'pending')
  redis.call('HDEL', k, 'until', 'token')
end
redis.call('ZADD', '{keys.OBJECTS}', 'GT', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# ARGV: name, size, ttl. 1 when the object is live now, scored ttl ahead; 0 if it is being deleted or unknown.
_PUBLISH = _PRELUDE + "return object_publish(ARGV[1], ARGV[2], redis_now() + tonumber(ARGV[3])) and 1 or 0\n"

# ARGV: name, ttl.
_KEEP = _PRELUDE + "object_keep(ARGV[1], redis_now() + tonumber(ARGV[2]))\nreturn 1\n"

# ARGV: name, lease_s, token. 1 when this sweeper now holds the object (its score has passed, and no other sweeper's
# lease runs); an entry with no score (only half there) is dropped.
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


def name(kind: str, digest: str) -> str:
    """An object's name from its kind and its digest (sha256 hex): `png/<d>.png`, `latent/<d>.safetensors`,
    `input/<d>`."""
    if kind not in _SUFFIX or not DIGEST_RE.fullmatch(digest):
        raise ValueError(f"no object name for kind {kind!r} and digest {digest!r}")
    return f"{kind}/{digest}{_SUFFIX[kind]}"


def reserve(redis, name: str, hold_s: float) -> bool:
    """Register `name` before its upload: pending (a live object stays live), not swept for `hold_s` seconds. False
    while a sweeper deletes it: upload only once that has ended."""
    return bool(redis.eval(_RESERVE, 0, name, hold_s))


def put(redis, store: ResultStore, name: str, data: bytes, hold_s: float, window_s: float, sleep=time.sleep) -> None:
    """Reserve and upload `data` as `name`, trying again with backoff (a delete under way, a store that does not
    answer) for `window_s` seconds; then StoreUnavailable("result store unavailable: ...")."""
    deadline, delay = time.monotonic() + window_s, 0.1
    while True:
        try:
            if reserve(redis, name, hold_s):
                store.put(name, data)
                return
            detail = f"{name} is being deleted"
        except StoreUnavailable as exc:
            detail = str(exc)
        left = deadline - time.monotonic()
        if left <= 0:
            raise StoreUnavailable(f"result store unavailable: {detail}")
        log.warning("storing %s: %s; trying again", name, detail)
        sleep(min(delay, left))
        delay = min(delay * 2, MAX_BACKOFF_S)


def publish(redis, name: str, size: int, ttl: int) -> bool:
    """Mark a reserved, uploaded object live and keep it `ttl` seconds more; False if it is being deleted or unknown."""
    return bool(redis.eval(_PUBLISH, 0, name, size, ttl))


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
    """One bounded pass: claim, delete and forget up to `limit` expired objects; returns how many went. A store that
    does not answer ends the pass (the claims lapse, and the next pass takes them again)."""
    deleted = 0
    for object_name in due(redis, limit):
        token = claim(redis, object_name)
        if token is None:
            continue
        try:
            store.delete(object_name)
        except StoreUnavailable as exc:
            log.warning("sweep stopped at %s: %s", object_name, exc)
            break
        deleted += forget(redis, object_name, token)
    if deleted:
        redis.hincrby(keys.METRICS, "objects_swept", deleted)
    return deleted
