"""Every answer under /v1 in OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.

The official SDKs read that shape (and the status: `BadRequestError` for a 400, `RateLimitError` for a 429, ...),
so the OpenAI-compatible routes (app.routes.openai) answer their errors in it. One middleware does it for every
error under /v1, wherever it was made: a route's, a validation error (a 422 becomes a 400, as OpenAI answers a bad
field, `param` naming it), auth's 401, and the answers of the middleware inside it (413, 408 and 415). An answer
already in the shape passes as it is. Other paths keep FastAPI's `{"detail": ...}`.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/v1/"
LOCATIONS = frozenset({"body", "header", "query", "path"})  # a validation error's loc starts with one
# status -> (type, code), as OpenAI's API names them; a status not listed is an invalid request (4xx) or a server
# error (5xx), without a code
KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout", "timeout"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}


def under_v1(path: str) -> bool:
    return path.startswith(PREFIX) or path == PREFIX.rstrip("/")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None, **extra) -> dict:
    """OpenAI's error object for `status`: its type (and default code) from KINDS."""
    kind, default_code = KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code or default_code, **extra}}


def param_of(loc) -> str | None:
    """The field a validation error's `loc` names (`["body", "size"]` -> "size"), or None for the whole body."""
    parts = [str(p) for p in loc or ()]
    if parts and parts[0] in LOCATIONS:
        parts = parts[1:]
    return ".".join(parts) or None


def translated(status: int, detail) -> tuple[int, dict]:
    """A `{"detail": ...}` answer as OpenAI's: a validation list is a 400 naming its first field."""
    if status == 422:
        status = 400
    if isinstance(detail, list) and detail and all(isinstance(e, dict) for e in detail):
        param = param_of(detail[0].get("loc"))
        message = "; ".join(described(e) for e in detail)
        return status, error_body(status, message, param)
    return status, error_body(status, detail if isinstance(detail, str) else json.dumps(detail))


def described(error: dict) -> str:
    """One validation error as text: `field: message`."""
    param = param_of(error.get("loc"))
    return f"{param}: {error.get('msg', '')}" if param else str(error.get("msg", ""))


def reshaped(status: int, body: bytes) -> tuple[int, bytes] | None:
    """The answer in OpenAI's shape, or None when it is in it already."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return None
    detail = data.get("detail", "") if isinstance(data, dict) else body.decode("utf-8", "replace")
    status, shaped = translated(status, detail)
    return status, json.dumps(shaped, separators=(",", ":")).encode()


class OpenAIErrors:
    """Rewrites every error answer (status >= 400) under /v1 into OpenAI's shape; other answers pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not under_v1(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def send_shaped(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the whole (small) error body is in
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await send_error(send, start, b"".join(chunks))

        await self.app(scope, receive, send_shaped)


async def send_error(send: Send, start: Message, body: bytes) -> None:
    status = start["status"]
    if (new := reshaped(status, body)) is not None:
        status, body = new
    skip = {b"content-length", b"content-type"}
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in skip]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({**start, "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
