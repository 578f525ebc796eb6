"""415 for a request body that is not declared as JSON: the API's bodies are JSON only.

Without this, `curl -d '{"seed": 1}' .../generate` (curl's default is a form type) is read as raw bytes and
answered "Input should be a valid dictionary", which does not say what to change. FastAPI reads a body
without a Content-Type as raw bytes too, so a non-empty body must declare its type.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def is_json(content_type: str) -> bool:
    """application/json, or a +json type, with any parameters (charset)."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


class JsonBodies:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            headers = dict(scope["headers"])
            declared = headers.get(b"content-type", b"").decode("latin-1")
            has_body = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
            if has_body and not is_json(declared):
                await refuse(send, declared or "none")
                return
        await self.app(scope, receive, send)


async def refuse(send: Send, declared: str) -> None:
    detail = f"the body must be JSON, sent with Content-Type: application/json (this one: {declared[:80]})"
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 415, "headers": headers})
    await send({"type": "http.response.body", "body": body})
