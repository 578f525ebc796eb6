"""Leases on a client's concurrent event streams and long polls: at most CLIENT_STREAMS at once.

A lease is a member of the client's sorted set, scored by its expiry. Taking one drops the expired ones and
counts the rest in the same Lua call, so that concurrent requests never pass the cap together; a lease whose
holder died expires by itself. A stream or long poll holds its lease while it lasts: it renews it RENEWALS
times in the lease's seconds, by the clock, whatever it is sending (`Lease.due`, `Lease.keep`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from app.core import keys

MAX_LEASE_S = 60  # no lease is taken or renewed for longer; the set itself lives that long after its last use
RENEWALS = 5  # renewals in a lease's seconds: a few late ones, while the process is busy, never lose it

# KEYS[1] = the client's leases. ARGV: now, expiry, cap, lease id, the set's TTL. 1 when taken, 0 at the cap.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS[1] = the client's leases. ARGV: now, expiry, lease id, the set's TTL. 1 when renewed, 0 when the lease
# was lost: gone from the set, or expired there (a take may have counted it out already).
_RENEW = """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not expiry or tonumber(expiry) <= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


def take(redis, client: str, cap: int, seconds: float, lease: str | None = None) -> str | None:
    """A lease for `seconds` (a new id, or `lease` taken again), or None when the client holds `cap` live ones."""
    lease, now, seconds = lease or uuid.uuid4().hex, time.time(), min(seconds, MAX_LEASE_S)
    taken = redis.eval(_TAKE, 1, keys.leases(client), now, now + seconds, cap, lease, MAX_LEASE_S)
    return lease if taken else None


def renew(redis, client: str, lease: str, seconds: float) -> bool:
    """Extend a held lease to `seconds` from now: True. False, and nothing changed, when it was lost."""
    now, seconds = time.time(), min(seconds, MAX_LEASE_S)
    return bool(redis.eval(_RENEW, 1, keys.leases(client), now, now + seconds, lease, MAX_LEASE_S))


def release(redis, client: str, lease: str) -> None:
    redis.zrem(keys.leases(client), lease)


@dataclass
class Lease:
    """The lease a stream or long poll holds while it lasts. Its loop calls `keep` whenever `due`, and waits at
    most `every_s` between two looks."""

    redis: object
    client: str
    cap: int
    seconds: float
    id: str
    renewed: float = field(default_factory=time.monotonic)

    @property
    def every_s(self) -> float:
        return self.seconds / RENEWALS

    def due(self) -> bool:
        return time.monotonic() - self.renewed >= self.every_s

    def keep(self) -> bool:
        """Renew the lease; a lost one is taken again under the cap. False when the client is at the cap: the
        holder ends (a stream closes, and the client resumes it with Last-Event-ID; a long poll answers).

        A lease is lost only when its holder went longer than its seconds without renewing (a stalled process,
        a client that stopped reading): nothing the stream did wrong. Taking it again spares the client a
        reconnect, and costs the cap nothing, since the take is the same atomic count as a new stream's."""
        self.renewed = time.monotonic()
        return renew(self.redis, self.client, self.id, self.seconds) or (
            take(self.redis, self.client, self.cap, self.seconds, self.id) is not None
        )

    def release(self) -> None:
        release(self.redis, self.client, self.id)


def hold(redis, client: str, cap: int, seconds: float) -> Lease | None:
    """A lease for a stream or long poll, or None when the client holds `cap` live ones."""
    lease = take(redis, client, cap, seconds)
    return Lease(redis, client, cap, seconds, lease) if lease else None
