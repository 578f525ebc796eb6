"""Results in answers: the one place where the API reads an object of the result store (app.core.results) for a
response.

A job's record names its results by digest, and the digest names the object (app.core.objects.name). So a
conditional request is answered from the record alone (304, the store untouched), a HEAD from the registry (its size),
and only a body is read from the store. A store that does not answer is a 503 with Retry-After; an object missing
behind a live record (deleted by hand, or a bucket lifecycle rule shorter than RESULT_TTL) is a 410 that says so, never
a 500 nor an empty 200. With DIFFUSETV_RESULTS_REDIRECT (s3), a GET of an image or a strip is a 307 to a presigned URL
of the object, whose bytes then never pass through the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import HTTPException, Response

from app.core import objects
from app.core.results import ResultStore, StoreUnavailable

STORE_RETRY_AFTER_S = 5
UNAVAILABLE = "the result store is unavailable; retry later"
MISSING = "is missing from the result store (deleted by hand, or a lifecycle rule shorter than RESULT_TTL)"


def object_name(kind: str, digest: str | None) -> str | None:
    """The object that holds a record's result of `kind` (objects.PNG, objects.LATENT) by its digest; None when the
    record names none (no digest, or not one): its result is missing."""
    try:
        return objects.name(kind, digest or "")
    except ValueError:
        return None


def unavailable() -> HTTPException:
    return HTTPException(503, UNAVAILABLE, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})


def missing(what: str) -> HTTPException:
    return HTTPException(410, f"{what} {MISSING}")


def read(store: ResultStore, name: str | None, what: str) -> bytes:
    """The object's bytes (blocking: call it in a thread); 410 naming `what` when there is no such object, 503 with
    Retry-After when the store does not answer."""
    if name is None:
        raise missing(what)
    try:
        data = store.get(name)
    except StoreUnavailable:
        raise unavailable() from None
    if data is None:
        raise missing(what)
    return data


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison for If-None-Match."""
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def immutable(settings) -> dict[str, str]:
    """The caching of a content-addressed result: the same URL always answers the same bytes while it answers."""
    return {"Cache-Control": f"public, max-age={settings.result_ttl}, immutable"}


@dataclass(frozen=True)
class Result:
    """One result as a route serves it: its object (None when its record names none), the digest that is its ETag,
    what it is (for the 410), its media type, and the headers that every answer but a redirect carries."""

    name: str | None
    digest: str
    what: str
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)
    redirect: bool = False  # a GET may be a 307 to the object (with DIFFUSETV_RESULTS_REDIRECT)


def serve(store: ResultStore, redis, settings, result: Result, method: str, if_none_match: str | None) -> Response:
    """The answer for `result` (blocking: call it in a thread): 304 on a matching If-None-Match, before anything is
    read; a HEAD from the registry alone (Content-Length once the object's size is known); a GET's 307 to a presigned
    URL where the result may redirect and the store signs one; else 200 with the bytes (410, 503 as `read`)."""
    etag = f'"{result.digest}"'
    headers = {"ETag": etag, **result.headers}
    if if_none_match and etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    if method == "HEAD":
        if result.name is None:
            raise missing(result.what)
        size = objects.size(redis, result.name)
        response = Response(status_code=200, media_type=result.media_type, headers=headers)
        if size is None:
            del response.headers["content-length"]  # unknown: not the 0 of the empty body
        else:
            response.headers["content-length"] = str(size)
        return response
    if result.redirect and settings.results_redirect and result.name is not None:
        try:
            url = store.presign(result.name, settings.results_presign_s)
        except StoreUnavailable:
            raise unavailable() from None
        if url is not None:
            return Response(status_code=307, headers={"Location": url, "Cache-Control": "no-store"})
    return Response(read(store, result.name, result.what), media_type=result.media_type, headers=headers)
