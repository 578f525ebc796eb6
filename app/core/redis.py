"""Redis connections from bounded, blocking pools with bounded timeouts, and a patient wait for Redis to come (back).

Every client gets an explicit pool size (never redis-py's version-dependent default). A caller that cannot get a
connection within the pool's wait gets `PoolExhausted`: the process is at capacity, Redis itself is fine.
"""

from __future__ import annotations

import logging
import time

import redis as redis_lib

CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0
POOL_SIZE = 16  # workers and command-line tools: a handful of threads each
POOL_WAIT_S = 5.0


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
