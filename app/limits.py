"""Request body limits: 413 for a body over 64 KiB (over DIFFUSETV_IMAGE_BODY_BYTES on the routes that take pictures,
PICTURE_ROUTES), whether or not it declares its length, before any of it is parsed, and 408 for one that does not arrive
in full within BODY_TIMEOUT_S (a client that never finishes its body holds nothing for long)."""

from __future__ import annotations

import json

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_S = 10.0
PICTURE_ROUTES = frozenset({"/generate", "/interpolate", "/invert"})  # their bodies may hold pictures (base64)


async def _send_error(send: Send, status: int, detail: str, close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_413(send: Send, limit: int) -> None:
    size = f"{limit // 1024} KiB" if limit < 2**20 else f"{limit / 2**20:g} MiB"
    await _send_error(send, 413, f"request body over {size}")


class BodySizeLimit:
    """Reads the whole body first (at most `limit` bytes are kept, `picture_limit` on PICTURE_ROUTES, within
    `timeout_s`), then hands it to the app."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int = MAX_BODY_BYTES,
        timeout_s: float = BODY_TIMEOUT_S,
        picture_limit: int = MAX_BODY_BYTES,
    ) -> None:
        self.app, self.limit, self.timeout_s, self.picture_limit = app, limit, timeout_s, picture_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.picture_limit if scope.get("path") in PICTURE_ROUTES else self.limit
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_413(send, limit)
            return
        chunks, size, more = [], 0, True
        with anyio.move_on_after(self.timeout_s) as deadline:
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client went away
                    await self.app(scope, receive, send)
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await _send_413(send, limit)
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
        if deadline.cancelled_caught:
            await _send_error(send, 408, f"the request body did not arrive within {self.timeout_s:g} s", close=True)
            return
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
