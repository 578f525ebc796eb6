"""The `redis` result store: objects as Redis strings beside the queue (keys.blob). The embedded default: `make run`
needs no other service, and a full Redis (maxmemory) refuses a result as it refuses a job."""

from __future__ import annotations

import redis as redis_lib

from app.core import keys
from app.core.results import StoreUnavailable

_FAULTS = (redis_lib.ConnectionError, redis_lib.TimeoutError, redis_lib.exceptions.OutOfMemoryError)


class RedisStore:
    scheme = "redis"
    inline_previews = True  # previews stay data URLs in the event stream, as they always were

    def __init__(self, redis) -> None:
        self.redis = redis

    def put(self, name: str, data: bytes) -> None:
        try:
            self.redis.set(keys.blob(name), data)
        except _FAULTS as exc:
            raise StoreUnavailable(f"redis: {exc}") from None

    def get(self, name: str) -> bytes | None:
        try:
            return self.redis.get(keys.blob(name))
        except _FAULTS as exc:
            raise StoreUnavailable(f"redis: {exc}") from None

    def delete(self, name: str) -> None:
        try:
            self.redis.delete(keys.blob(name))
        except _FAULTS as exc:
            raise StoreUnavailable(f"redis: {exc}") from None

    def presign(self, name: str, expires_s: int) -> str | None:
        return None
