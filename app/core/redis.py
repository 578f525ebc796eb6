"""Redis connections with bounded timeouts, and a patient wait for Redis to come (back)."""

from __future__ import annotations

import logging
import time

import redis as redis_lib

CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0


def connect_sync(url: str, socket_timeout: float | None = SOCKET_TIMEOUT_S) -> redis_lib.Redis:
    """A client whose calls fail within bounded time when Redis is away (no infinite hang)."""
    return redis_lib.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        retry_on_timeout=False,
    )


def connect_async(url: str) -> redis_lib.asyncio.Redis:
    """An asyncio client for long reads (event streams); the same bounded connect timeout."""
    import redis.asyncio

    return redis.asyncio.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, health_check_interval=15)


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
