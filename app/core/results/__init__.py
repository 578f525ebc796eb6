"""Where results live: one interface, three backends chosen by DIFFUSETV_RESULTS (DESIGN.md, Results).

- `redis`: the objects are Redis strings beside the queue (the embedded default: no other service);
- `file:///dir`: files under a local or shared directory, written atomically (file_store);
- `s3://bucket/prefix`: objects in any S3-compatible store, through boto3 (s3_store).

A store only holds bytes by name. Which objects exist, which jobs use them and when they may go is kept in Redis
(app.core.objects), so that the submit script can check and extend it atomically; the names are content addresses
(`png/<sha256>.png`), so that a cache hit or a joined run points at the same object instead of copying it.
"""

from __future__ import annotations

import threading
from typing import Protocol
from urllib.parse import urlsplit

SCHEMES = ("redis", "file", "s3")


class StoreUnavailable(RuntimeError):
    """The store did not answer in time, or refused for a reason that may pass (down, slow, 5xx): retry later (503)."""


class ResultStore(Protocol):
    """Bytes by name. `put` is durable when it returns: a reader, or a crash, never sees half an object."""

    scheme: str  # "redis", "file" or "s3"
    inline_previews: bool  # True: previews travel in the event stream as data URLs; False: as objects of their own

    def put(self, name: str, data: bytes) -> None:
        """Store `data` under `name` (replacing it; names are content addresses, so the bytes are the same).
        Raises StoreUnavailable."""

    def get(self, name: str) -> bytes | None:
        """The object's bytes; None when there is no such object. Raises StoreUnavailable."""

    def delete(self, name: str) -> None:
        """Remove the object; a missing one is no error. Raises StoreUnavailable."""

    def presign(self, name: str, expires_s: int) -> str | None:
        """A URL that GETs the object for `expires_s` seconds without credentials; None where the store has none."""


def location(results: str) -> tuple[str, str]:
    """(scheme, where) of a DIFFUSETV_RESULTS value: ("redis", ""), ("file", "/abs/dir") or ("s3", "bucket/prefix");
    ValueError, with what is expected, for anything else."""
    if results == "redis":
        return "redis", ""
    parts = urlsplit(results)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/") or parts.query or parts.fragment:
            raise ValueError(f"{results!r}: a directory is file:///absolute/path")
        return "file", parts.path.rstrip("/") or "/"
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not bucket or parts.query or parts.fragment or not all(c.isalnum() or c in ".-" for c in bucket):
            raise ValueError(f"{results!r}: an S3 location is s3://bucket or s3://bucket/prefix")
        prefix = parts.path.strip("/")
        return "s3", f"{bucket}/{prefix}" if prefix else bucket
    raise ValueError(f"{results!r}: use redis, file:///absolute/dir or s3://bucket/prefix")


_lock = threading.Lock()
_opened: dict[tuple, ResultStore] = {}


def open_store(settings, redis) -> ResultStore:
    """The store that `settings` name. `redis` is the connection a `redis` store keeps its objects on (the caller's
    own); file and S3 stores are made once per process and location, and shared by its threads."""
    scheme, where = location(settings.results)
    if scheme == "redis":
        from app.core.results.redis_store import RedisStore

        return RedisStore(redis)
    key = (scheme, where, *(getattr(settings, f) for f in sorted(type(settings).model_fields) if f.startswith("s3_")))
    with _lock:
        if key not in _opened:
            if scheme == "file":
                from app.core.results.file_store import FileStore

                _opened[key] = FileStore(where)
            else:
                from app.core.results.s3_store import S3Store

                _opened[key] = S3Store.from_settings(where, settings)
        return _opened[key]
