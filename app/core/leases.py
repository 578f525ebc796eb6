"""Leases on a client's concurrent event streams and long polls: at most CLIENT_STREAMS at once.

A lease is a member of the client's sorted set, scored by its expiry. Taking one drops the expired ones and
counts the rest in the same Lua call, so that concurrent requests never pass the cap together; a lease whose
holder died expires by itself.
"""

from __future__ import annotations

import time
import uuid

from app.core import keys

MAX_LEASE_S = 60  # no lease is taken or renewed for longer; the set itself lives that long after its last use

# KEYS[1] = the client's leases. ARGV: now, expiry, cap, lease id, the set's TTL. 1 when taken, 0 at the cap.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def take(redis, client: str, cap: int, seconds: float) -> str | None:
    """A new lease id for `seconds`, or None when the client holds `cap` live leases."""
    lease, now, seconds = uuid.uuid4().hex, time.time(), min(seconds, MAX_LEASE_S)
    taken = redis.eval(_TAKE, 1, keys.leases(client), now, now + seconds, cap, lease, MAX_LEASE_S)
    return lease if taken else None


def renew(redis, client: str, lease: str, seconds: float) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.zadd(keys.leases(client), {lease: time.time() + min(seconds, MAX_LEASE_S)}, xx=True)
    pipe.expire(keys.leases(client), MAX_LEASE_S)
    pipe.execute()


def release(redis, client: str, lease: str) -> None:
    redis.zrem(keys.leases(client), lease)
